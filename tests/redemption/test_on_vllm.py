"""The whole story on a real vLLM (the `vllm` tier): signed calls through the redemption service and a node
agent in front of the session's CPU vLLM, metered from the node's receipts, settled on chain, and passing
the auditor's verification.

The deployment is `tests.support.stack.deployment` with the tiny model on the rate card and one node agent
fronting the real server instead of the simulated nodes; settlement and indexing are the helpers of
`tests.support.audit`, verification `ledger.audit.verifier.verify`, as `sluice audit verify` runs it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.audit.verifier import AuditApi, verify
from ledger.chain.deploy import parse_models
from ledger.config import Settings
from ledger.domain import usage_cost
from ledger.keys import embedded_account
from ledger.settlement.settings import SettlementSettings
from ledger.settlement.settler import Settler
from ledger.settlement.store import Database
from ledger.stack.apps import EmbeddedNode, node_services
from ledger.stack.services import NODE_PREFIX, Service
from ledger.units import ONE_TOKEN
from redemption.sdk import SluiceAuth
from tests.support.audit import settle_waiting, wait_indexed
from tests.support.stack import Deployed, deployment
from tests.support.vllm import MAX_MODEL_LEN, TINY_MODEL, RealVllm

pytestmark = pytest.mark.vllm

RATE_CARD = f"{TINY_MODEL}:20:60:edge"
[(_, INPUT_RATE, OUTPUT_RATE, _)] = parse_models(RATE_CARD)
CHAT_MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello, please."}]
CHAT_PROMPT_TOKENS = 23  # the tiny model's count (tests/inference_node/recorded/vllm-0.32/tokenize-chat.json)
NEAR_FULL = [{"role": "user", "content": " ".join(["hello"] * 2000)}]  # 2,008 tokens of the 2,048 context
OVER_FULL = [{"role": "user", "content": " ".join(["hello"] * 2100)}]


def agent_in_front_of(vllm_url: str) -> Any:
    """The stack's node services: one agent (the embedded edge node's) fronting `vllm_url`, no simulator."""

    def build(settings: Settings, record: dict[str, Any]) -> list[Service]:
        node = EmbeddedNode("vllm-1", "edge", "eu-west-edge", 10, (0,))
        agent = next(svc for svc in node_services(settings, record, (node,)) if svc.name.startswith(NODE_PREFIX))
        assert agent.launch is not None
        argv = list(agent.launch.argv)
        argv[argv.index("--vllm-url") + 1] = vllm_url
        return [dataclasses.replace(agent, launch=dataclasses.replace(agent.launch, argv=tuple(argv)))]

    return build


@pytest.fixture(scope="module")
def on_vllm(postgres_url: str, tmp_path_factory: pytest.TempPathFactory, real_vllm: RealVllm) -> Iterator[Deployed]:
    with deployment(postgres_url, tmp_path_factory.mktemp("sluice-vllm"), models=RATE_CARD,
                    nodes=agent_in_front_of(real_vllm.base_url)) as deployed:  # fmt: skip
        yield deployed


def call(deployed: Deployed, key: LocalAccount, payer: LocalAccount, **fields: Any) -> httpx.Response:
    body = json.dumps({"model": TINY_MODEL, "messages": CHAT_MESSAGES, "temperature": 0, **fields})
    auth = SluiceAuth(key, payer=payer.address, max_cost=10**18)
    return httpx.post(deployed.api + "/v1/chat/completions", content=body, auth=auth, timeout=120,
                      headers={"content-type": "application/json"})  # fmt: skip


def test_signed_calls_on_vllm_are_metered_settled_and_verified(on_vllm: Deployed) -> None:
    enterprise = on_vllm.fund(10)
    developer = on_vllm.developer(enterprise, 5 * ONE_TOKEN)
    on_vllm.wait_mirrored()
    costs: list[int] = []

    answer = call(on_vllm, developer, enterprise, max_tokens=8)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == f"chatcmpl-{answer.headers['Sluice-Job-Id'][2:]}"  # vLLM's request is the job
    assert answer.json()["usage"]["prompt_tokens"] == CHAT_PROMPT_TOKENS
    assert answer.json()["usage"]["completion_tokens"] == 8
    costs.append(int(answer.headers["Sluice-Cost"]))
    assert costs[-1] == usage_cost(CHAT_PROMPT_TOKENS, 8, INPUT_RATE, OUTPUT_RATE)

    # No max_tokens: the service writes its chat default (32,768), more than this context; vLLM refuses a limit
    # over the context, so the agent lowers it to the 2,048 and vLLM gives the 40 the prompt leaves.
    near_full = call(on_vllm, developer, enterprise, messages=NEAR_FULL)
    assert near_full.status_code == 200, near_full.text
    assert near_full.json()["usage"]["completion_tokens"] == MAX_MODEL_LEN - 2008
    costs.append(int(near_full.headers["Sluice-Cost"]))
    assert costs[-1] == usage_cost(2008, MAX_MODEL_LEN - 2008, INPUT_RATE, OUTPUT_RATE)

    with httpx.stream("POST", on_vllm.api + "/v1/chat/completions", timeout=120,
                      content=json.dumps({"model": TINY_MODEL, "messages": CHAT_MESSAGES, "max_tokens": 6,
                                          "stream": True, "stream_options": {"include_usage": True}}),
                      auth=SluiceAuth(developer, payer=enterprise.address, max_cost=10**18),
                      headers={"content-type": "application/json"}) as streamed:  # fmt: skip
        assert streamed.status_code == 200
        frames = [line.removeprefix("data: ") for line in streamed.iter_lines() if line.startswith("data: {")]
    final = json.loads(frames[-1])
    assert (final["usage"]["prompt_tokens"], final["usage"]["completion_tokens"]) == (CHAT_PROMPT_TOKENS, 6)
    costs.append(int(final["sluice"]["cost"]))
    assert costs[-1] == usage_cost(CHAT_PROMPT_TOKENS, 6, INPUT_RATE, OUTPUT_RATE)

    # vLLM's refusal reaches the client in the service's envelope, uncharged.
    refused = call(on_vllm, developer, enterprise, messages=OVER_FULL, max_tokens=8)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert error["message"].startswith("This model's maximum context length is 2048 tokens.")
    assert error["message"].endswith("; nothing was charged")

    settings = SettlementSettings(home=on_vllm.settings.home, rpc_url=on_vllm.settings.effective_rpc_url,
                                  database_url=on_vllm.db_url)  # fmt: skip
    settler = Settler(on_vllm.ledger, embedded_account(1), Database(on_vllm.db_url), settings)
    supply = on_vllm.ledger.total_supply()
    batch = settle_waiting(on_vllm, settler)
    assert on_vllm.ledger.total_supply() == supply - sum(costs)  # every metered call burned, once
    wait_indexed(on_vllm)

    auditor: LocalAccount = Account.create()
    on_vllm.ledger.grant_role(on_vllm.operator, "AUDITOR_ROLE", auditor.address)
    api = AuditApi(on_vllm.api, auditor)
    try:
        report = verify(on_vllm.settings.effective_rpc_url, api, workers=1)
    finally:
        api.close()
    assert report.discrepancies == []
    assert (report.batches, report.receipts, report.signatures) == (1, 3, 6)
    assert report.total_supply == report.minted - report.burned == on_vllm.ledger.total_supply()
    rows = on_vllm.sql("SELECT prompt_tokens, completion_tokens, cost FROM usage_records WHERE batch_id = %s"
                       " ORDER BY cost", batch)  # fmt: skip
    assert [tuple(int(v) for v in row) for row in rows] == sorted(
        [(CHAT_PROMPT_TOKENS, 8, costs[0]), (2008, MAX_MODEL_LEN - 2008, costs[1]), (CHAT_PROMPT_TOKENS, 6, costs[2])],
        key=lambda row: row[2],
    )
