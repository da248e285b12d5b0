"""The service serves the built portal at /portal/: index revalidated, hashed assets immutable, a clear 404
page when the portal is not built, and nothing outside the build directory."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from redemption.api.portal import DEFAULT_DIST
from redemption.app import create_app
from redemption.config import ServiceSettings


def client(home: Path, dist: Path) -> TestClient:
    # No `with`: the lifespan (chain, database) is not needed for static files.
    settings = ServiceSettings(home=home, database_url="postgresql://unused", portal_dir=dist)
    return TestClient(create_app(settings), follow_redirects=False)


def built(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text('<!doctype html><script src="./assets/index-Ab12.js"></script>')
    (dist / "assets" / "index-Ab12.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("not for the web")
    return dist


def test_the_index_and_hashed_assets_with_their_cache_headers(tmp_path: Path) -> None:
    web = client(tmp_path, built(tmp_path))
    index = web.get("/portal/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert index.text == '<!doctype html><script src="./assets/index-Ab12.js"></script>'
    assert index.headers["cache-control"] == "no-cache"
    assert web.get("/portal/index.html").headers["cache-control"] == "no-cache"
    asset = web.get("/portal/assets/index-Ab12.js")
    assert (asset.status_code, asset.text) == (200, "console.log(1)")
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert asset.headers["content-type"].startswith("text/javascript")
    assert "content-encoding" not in asset.headers  # under 1 KiB: sent as it is
    redirect = web.get("/portal")
    assert (redirect.status_code, redirect.headers["location"]) == (308, "/portal/")


def test_assets_are_gzipped_for_browsers_that_accept_it(tmp_path: Path) -> None:
    dist = built(tmp_path)
    (dist / "assets" / "index-Ab12.js").write_text("console.log(1);" * 1000)
    web = client(tmp_path, dist)
    raw = web.get("/portal/assets/index-Ab12.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers and len(raw.content) == 15_000
    packed = web.get("/portal/assets/index-Ab12.js", headers={"Accept-Encoding": "gzip, br"})
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    assert packed.text == "console.log(1);" * 1000  # httpx decodes it
    assert int(packed.headers["content-length"]) < 200
    assert packed.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert packed.headers["content-type"].startswith("text/javascript")


def test_missing_files_and_paths_outside_the_build_are_404(tmp_path: Path) -> None:
    web = client(tmp_path, built(tmp_path))
    for path in ("/portal/assets/nope.js", "/portal/../secret.txt", "/portal/%2e%2e/secret.txt",
                 "/portal/assets/%2e%2e/%2e%2e/secret.txt", "/portal/assets"):
        answer = web.get(path)
        assert answer.status_code == 404, path
        assert "not for the web" not in answer.text


def test_an_unbuilt_portal_says_how_to_build_it(tmp_path: Path) -> None:
    web = client(tmp_path, tmp_path / "nowhere")
    for path in ("/portal/", "/portal/assets/index-Ab12.js"):
        answer = web.get(path)
        assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/html")
        assert "The Sluice portal is not built" in answer.text
        assert "npm --prefix portal run build" in answer.text and "make setup" in answer.text
        assert str(tmp_path / "nowhere") in answer.text


def test_the_portal_is_not_in_the_openapi_document(tmp_path: Path) -> None:
    paths = client(tmp_path, built(tmp_path)).get("/openapi.json").json()["paths"]
    assert not any(p.startswith("/portal") for p in paths)


def test_the_default_is_the_repository_build() -> None:
    assert Path(__file__).resolve().parents[2] / "portal" / "dist" == DEFAULT_DIST
