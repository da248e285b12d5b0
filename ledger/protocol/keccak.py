"""keccak256 for hot loops: pycryptodome's C core called directly, without its per-call Python objects.

`eth_hash.auto.keccak` (the pycryptodome backend here) builds a hash object per call, ~11 µs; this is
~4 µs, which matters when every receipt of a batch costs several hashes (leaves, EIP-712 digests,
addresses from public keys). Falls back to pycryptodome's public API when its raw library is not there
(pycryptodome is a dependency of the light client and of the server: no other backend is needed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


def _public_keccak() -> Callable[[bytes], bytes]:
    from Crypto.Hash import keccak as _keccak

    def keccak256(data: bytes) -> bytes:
        return bytes(_keccak.new(data=data, digest_bits=256).digest())

    return keccak256


_eth_keccak = _public_keccak()


def _raw_keccak() -> Callable[[bytes], bytes]:
    try:
        from Crypto.Hash.keccak import _raw_keccak_lib as lib  # type: ignore[attr-defined]
        from Crypto.Util._raw_api import (  # type: ignore[attr-defined]
            VoidPointer,
            c_size_t,
            c_ubyte,
            create_string_buffer,
        )
    except ImportError:  # another backend: use it as it is
        return _eth_keccak
    local = threading.local()  # one hash state per thread
    digest_size, padding = c_size_t(32), c_ubyte(1)
    sizes: dict[int, object] = {}  # inputs come in a handful of lengths: convert each once

    def keccak256(data: bytes) -> bytes:
        state = getattr(local, "state", None)
        if state is None:
            pointer = VoidPointer()
            if lib.keccak_init(pointer.address_of(), c_size_t(64), c_ubyte(24)):
                raise RuntimeError("keccak_init failed")
            state = local.state = pointer.get()
            local.out = create_string_buffer(32)  # type: ignore[call-arg]
        size = sizes.get(len(data))
        if size is None:
            size = c_size_t(len(data))
            if len(data) <= 1024:  # digests, words and addresses repeat; request bodies do not
                sizes[len(data)] = size
        lib.keccak_reset(state)
        lib.keccak_absorb(state, data, size)
        lib.keccak_digest(state, local.out, digest_size, padding)
        return local.out.raw  # type: ignore[no-any-return]

    if keccak256(b"") != _eth_keccak(b"") or keccak256(b"abc" * 100) != _eth_keccak(b"abc" * 100):
        return _eth_keccak
    return keccak256


keccak256 = _raw_keccak()
