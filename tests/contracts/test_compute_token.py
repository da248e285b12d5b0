"""ComputeToken behaviour: roles, the allowlist, pause, EIP-2612 permit, Transfer events, and the escrow
contract as the only way in to Settlement and the only burner.

Every refusal is asserted by its exact custom error and values, every event by its exact args.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eth_account import Account
from eth_account.messages import encode_typed_data

from ledger.chain.client import Ledger, role_id
from ledger.units import ONE_TOKEN
from tests.support.assertions import ZERO_ADDRESS, events, latest_timestamp, reverts

if TYPE_CHECKING:
    from tests.support.ledger import Actors









# -- mint ------------------------------------------------------------------------------------
def test_mint_by_minter_emits_transfer_from_zero(ledger: Ledger, actors: Actors) -> None:
    ledger.set_allowlisted(actors.operator, actors.enterprise.address, True)
    supply = ledger.total_supply()

    tx = ledger.mint(actors.operator, actors.enterprise.address, 7 * ONE_TOKEN + 3)

    assert events(ledger.token.events.Transfer, tx) == [
        {"from": ZERO_ADDRESS, "to": actors.enterprise.address, "value": 7 * ONE_TOKEN + 3}
    ]
    assert ledger.balance_of(actors.enterprise.address) == 7 * ONE_TOKEN + 3
    assert ledger.total_supply() == supply + 7 * ONE_TOKEN + 3


def test_mint_without_minter_role_is_refused(ledger: Ledger, actors: Actors) -> None:
    ledger.set_allowlisted(actors.operator, actors.enterprise.address, True)

    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("MINTER_ROLE")):
        ledger.mint(actors.other, actors.enterprise.address, ONE_TOKEN)
    # The settler holds SETTLER_ROLE on Settlement, which gives it nothing on the token.
    with reverts("AccessControlUnauthorizedAccount", account=actors.settler.address, neededRole=role_id("MINTER_ROLE")):
        ledger.mint(actors.settler, actors.enterprise.address, ONE_TOKEN)
    assert ledger.balance_of(actors.enterprise.address) == 0


def test_granted_minter_can_mint_and_revoked_cannot(ledger: Ledger, actors: Actors) -> None:
    ledger.set_allowlisted(actors.operator, actors.enterprise.address, True)
    ledger.grant_role(actors.operator, "MINTER_ROLE", actors.other.address)

    ledger.mint(actors.other, actors.enterprise.address, 5)
    ledger.revoke_role(actors.operator, "MINTER_ROLE", actors.other.address)

    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("MINTER_ROLE")):
        ledger.mint(actors.other, actors.enterprise.address, 5)
    assert ledger.balance_of(actors.enterprise.address) == 5


def test_only_admin_grants_roles(ledger: Ledger, actors: Actors) -> None:
    with reverts(
        "AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("DEFAULT_ADMIN_ROLE")
    ):
        ledger.grant_role(actors.other, "MINTER_ROLE", actors.other.address)
    assert not ledger.has_role("MINTER_ROLE", actors.other.address)


def test_deployment_wires_roles(ledger: Ledger, actors: Actors) -> None:
    assert ledger.has_role("MINTER_ROLE", ledger.sale.address)
    assert ledger.has_role("MINTER_ROLE", actors.operator.address)
    assert ledger.has_role("REDEEMER_ROLE", ledger.settlement.address)
    assert not ledger.has_role("REDEEMER_ROLE", actors.operator.address)
    assert ledger.has_role("SETTLER_ROLE", actors.settler.address)
    assert not ledger.has_role("SETTLER_ROLE", actors.operator.address)
    assert ledger.has_role("DEPOSITOR_ROLE", ledger.sale.address)
    assert not ledger.has_role("DEPOSITOR_ROLE", actors.operator.address)
    assert ledger.has_role("REGISTRAR_ROLE", actors.operator.address)
    assert ledger.escrow_address() == ledger.settlement.address
    for role in ("COMPLIANCE_ROLE", "PAUSER_ROLE", "DEFAULT_ADMIN_ROLE"):
        assert ledger.has_role(role, actors.operator.address)
    for contract in ("settlement", "node_registry"):
        assert ledger.has_role("DEFAULT_ADMIN_ROLE", actors.operator.address, on=contract)
    assert ledger.has_role("PAUSER_ROLE", actors.operator.address, on="settlement")


def test_mint_to_non_allowlisted_is_refused(ledger: Ledger, actors: Actors) -> None:
    with reverts("ComputeTokenNotAllowlisted", account=actors.developer.address):
        ledger.mint(actors.operator, actors.developer.address, ONE_TOKEN)
    assert ledger.balance_of(actors.developer.address) == 0


# -- transfers and the allowlist ---------------------------------------------------------------
def test_transfer_between_allowlisted(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)

    tx = ledger.transfer(funded.enterprise, funded.developer.address, 40 * ONE_TOKEN)

    assert events(ledger.token.events.Transfer, tx) == [
        {"from": funded.enterprise.address, "to": funded.developer.address, "value": 40 * ONE_TOKEN}
    ]
    assert ledger.balance_of(funded.enterprise.address) == 960 * ONE_TOKEN
    assert ledger.balance_of(funded.developer.address) == 40 * ONE_TOKEN


def test_transfer_to_non_allowlisted_is_refused(ledger: Ledger, funded: Actors) -> None:
    with reverts("ComputeTokenNotAllowlisted", account=funded.developer.address):
        ledger.transfer(funded.enterprise, funded.developer.address, ONE_TOKEN)
    assert ledger.balance_of(funded.enterprise.address) == 1_000 * ONE_TOKEN


def test_transfer_from_delisted_account_is_refused(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)
    ledger.set_allowlisted(funded.operator, funded.enterprise.address, False)

    with reverts("ComputeTokenNotAllowlisted", account=funded.enterprise.address):
        ledger.transfer(funded.enterprise, funded.developer.address, ONE_TOKEN)
    assert ledger.balance_of(funded.enterprise.address) == 1_000 * ONE_TOKEN


def test_transfer_from_by_spender_checks_the_owner_listing(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)
    ledger.approve(funded.enterprise, funded.developer.address, 10 * ONE_TOKEN)
    ledger.set_allowlisted(funded.operator, funded.enterprise.address, False)

    transfer_from = ledger.token.functions.transferFrom(funded.enterprise.address, funded.developer.address, ONE_TOKEN)
    with reverts("ComputeTokenNotAllowlisted", account=funded.enterprise.address):
        ledger._transact(funded.developer, transfer_from)
    assert ledger.allowance(funded.enterprise.address, funded.developer.address) == 10 * ONE_TOKEN


def test_transfer_above_balance_is_refused(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)

    with reverts(
        "ERC20InsufficientBalance",
        sender=funded.enterprise.address,
        balance=1_000 * ONE_TOKEN,
        needed=1_000 * ONE_TOKEN + 1,
    ):
        ledger.transfer(funded.enterprise, funded.developer.address, 1_000 * ONE_TOKEN + 1)


def test_set_allowlisted_emits_event(ledger: Ledger, actors: Actors) -> None:
    tx = ledger.set_allowlisted(actors.operator, actors.developer.address, True)
    assert events(ledger.token.events.AllowlistUpdated, tx) == [{"account": actors.developer.address, "allowed": True}]
    assert ledger.is_allowlisted(actors.developer.address)

    tx = ledger.set_allowlisted(actors.operator, actors.developer.address, False)
    assert events(ledger.token.events.AllowlistUpdated, tx) == [{"account": actors.developer.address, "allowed": False}]
    assert not ledger.is_allowlisted(actors.developer.address)


def test_only_compliance_role_sets_allowlist(ledger: Ledger, actors: Actors) -> None:
    with reverts(
        "AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("COMPLIANCE_ROLE")
    ):
        ledger.set_allowlisted(actors.other, actors.other.address, True)
    assert not ledger.is_allowlisted(actors.other.address)

    ledger.grant_role(actors.operator, "COMPLIANCE_ROLE", actors.other.address)
    tx = ledger.set_allowlisted(actors.other, actors.other.address, True)
    assert events(ledger.token.events.AllowlistUpdated, tx) == [{"account": actors.other.address, "allowed": True}]


# -- pause -----------------------------------------------------------------------------------
def test_pause_stops_mint_transfer_and_deposit(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)

    tx = ledger.pause(funded.operator)
    assert events(ledger.token.events.Paused, tx) == [{"account": funded.operator.address}]
    assert ledger.paused()

    with reverts("EnforcedPause"):
        ledger.mint(funded.operator, funded.enterprise.address, ONE_TOKEN)
    with reverts("EnforcedPause"):
        ledger.transfer(funded.enterprise, funded.developer.address, ONE_TOKEN)
    with reverts("EnforcedPause"):
        ledger.deposit(funded.enterprise, ONE_TOKEN)
    with reverts("EnforcedPause"):
        ledger.pause(funded.operator)
    assert ledger.balance_of(funded.enterprise.address) == 1_000 * ONE_TOKEN

    tx = ledger.unpause(funded.operator)
    assert events(ledger.token.events.Unpaused, tx) == [{"account": funded.operator.address}]
    ledger.transfer(funded.enterprise, funded.developer.address, ONE_TOKEN)
    assert ledger.balance_of(funded.developer.address) == ONE_TOKEN


def test_unpause_when_not_paused_is_refused(ledger: Ledger, actors: Actors) -> None:
    with reverts("ExpectedPause"):
        ledger.unpause(actors.operator)


def test_only_pauser_role_pauses_and_unpauses(ledger: Ledger, actors: Actors) -> None:
    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("PAUSER_ROLE")):
        ledger.pause(actors.other)
    assert not ledger.paused()

    ledger.pause(actors.operator)
    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("PAUSER_ROLE")):
        ledger.unpause(actors.other)
    assert ledger.paused()


# -- permit ----------------------------------------------------------------------------------
def permit_signer_for(
    ledger: Ledger, owner: str, spender: str, value: int, nonce: int, deadline: int, v: int, r: bytes, s: bytes
) -> str:
    """The address ECDSA recovers from (v, r, s) over the Permit with these fields (what OZ compares)."""
    fields = ledger.token.functions.eip712Domain().call()
    domain = {"name": fields[1], "version": fields[2], "chainId": fields[3], "verifyingContract": fields[4]}
    types = {
        "Permit": [
            {"name": "owner", "type": "address"},
            {"name": "spender", "type": "address"},
            {"name": "value", "type": "uint256"},
            {"name": "nonce", "type": "uint256"},
            {"name": "deadline", "type": "uint256"},
        ]
    }
    message = {"owner": owner, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline}
    signable = encode_typed_data(domain, types, message)
    return str(Account.recover_message(signable, vrs=(v, r, s)))


def test_permit_domain_is_the_token(ledger: Ledger) -> None:
    fields = ledger.token.functions.eip712Domain().call()
    assert tuple(fields[1:5]) == ("Sluice Compute Token", "1", ledger.w3.eth.chain_id, ledger.token.address)


def test_valid_permit_sets_allowance(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise, funded.developer.address
    deadline = latest_timestamp(ledger) + 3600
    v, r, s = ledger.sign_permit(ledger.token, owner, spender, 25 * ONE_TOKEN, deadline)

    # Anyone may submit the permit; the relayer here is the spender itself.
    tx = ledger.permit(funded.developer, owner.address, spender, 25 * ONE_TOKEN, deadline, v, r, s)

    assert events(ledger.token.events.Approval, tx) == [
        {"owner": owner.address, "spender": spender, "value": 25 * ONE_TOKEN}
    ]
    assert ledger.allowance(owner.address, spender) == 25 * ONE_TOKEN
    assert ledger.token.functions.nonces(owner.address).call() == 1


def test_expired_permit_is_refused(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise, funded.developer.address
    deadline = latest_timestamp(ledger) - 1
    v, r, s = ledger.sign_permit(ledger.token, owner, spender, ONE_TOKEN, deadline)

    with reverts("ERC2612ExpiredSignature", deadline=deadline):
        ledger.permit(funded.developer, owner.address, spender, ONE_TOKEN, deadline, v, r, s)
    assert ledger.allowance(owner.address, spender) == 0
    assert ledger.token.functions.nonces(owner.address).call() == 0


def test_replayed_permit_is_refused(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise, funded.developer.address
    deadline = latest_timestamp(ledger) + 3600
    v, r, s = ledger.sign_permit(ledger.token, owner, spender, 5 * ONE_TOKEN, deadline)
    ledger.permit(funded.developer, owner.address, spender, 5 * ONE_TOKEN, deadline, v, r, s)
    ledger.approve(owner, spender, 0)

    # OZ 5.x hashes the permit with the owner's *current* nonce (now 1), so the replayed
    # signature recovers to an unrelated address: ERC2612InvalidSigner(that address, owner).
    recovered = permit_signer_for(ledger, owner.address, spender, 5 * ONE_TOKEN, 1, deadline, v, r, s)
    assert recovered != owner.address
    with reverts("ERC2612InvalidSigner", signer=recovered, owner=owner.address):
        ledger.permit(funded.developer, owner.address, spender, 5 * ONE_TOKEN, deadline, v, r, s)
    assert ledger.allowance(owner.address, spender) == 0


def test_permit_signed_by_another_key_is_refused(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise.address, funded.developer.address
    deadline = latest_timestamp(ledger) + 3600
    # The developer signs a permit claiming to be the enterprise (nonce 0 as the token expects).
    forged = Account.from_key(funded.developer.key)
    fields = ledger.token.functions.eip712Domain().call()
    domain = {"name": fields[1], "version": fields[2], "chainId": fields[3], "verifyingContract": fields[4]}
    types = {
        "Permit": [
            {"name": "owner", "type": "address"},
            {"name": "spender", "type": "address"},
            {"name": "value", "type": "uint256"},
            {"name": "nonce", "type": "uint256"},
            {"name": "deadline", "type": "uint256"},
        ]
    }
    message = {"owner": owner, "spender": spender, "value": ONE_TOKEN, "nonce": 0, "deadline": deadline}
    signed = forged.sign_typed_data(domain, types, message)

    with reverts("ERC2612InvalidSigner", signer=funded.developer.address, owner=owner):
        ledger.permit(
            funded.developer,
            owner,
            spender,
            ONE_TOKEN,
            deadline,
            signed.v,
            signed.r.to_bytes(32, "big"),
            signed.s.to_bytes(32, "big"),
        )


def test_permit_with_tampered_value_is_refused(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise, funded.developer.address
    deadline = latest_timestamp(ledger) + 3600
    v, r, s = ledger.sign_permit(ledger.token, owner, spender, ONE_TOKEN, deadline)

    recovered = permit_signer_for(ledger, owner.address, spender, 2 * ONE_TOKEN, 0, deadline, v, r, s)
    with reverts("ERC2612InvalidSigner", signer=recovered, owner=owner.address):
        ledger.permit(funded.developer, owner.address, spender, 2 * ONE_TOKEN, deadline, v, r, s)


# -- the escrow contract: the only way into Settlement and the only burner -------------------------
def test_no_burn_path_for_holders_or_approved_keys(ledger: Ledger) -> None:
    methods = ledger.token.functions
    names = {entry["name"] for entry in ledger.token.abi if entry.get("type") == "function"}
    assert "burnEscrowed" in names
    assert names.isdisjoint({"burn", "burnFrom", "redeemBatch"})
    assert hasattr(methods, "burnEscrowed")


def test_burn_escrowed_only_by_redeemer_role(ledger: Ledger, funded: Actors) -> None:
    for caller in (funded.operator, funded.settler, funded.enterprise):
        with reverts("AccessControlUnauthorizedAccount", account=caller.address, neededRole=role_id("REDEEMER_ROLE")):
            ledger._transact(caller, ledger.token.functions.burnEscrowed(1))


def test_burn_escrowed_by_a_redeemer_that_is_not_the_escrow_is_refused(ledger: Ledger, funded: Actors) -> None:
    ledger.grant_role(funded.operator, "REDEEMER_ROLE", funded.enterprise.address)
    supply = ledger.total_supply()

    with reverts("ComputeTokenNotEscrow", caller=funded.enterprise.address, escrow=ledger.settlement.address):
        ledger._transact(funded.enterprise, ledger.token.functions.burnEscrowed(ONE_TOKEN))
    assert ledger.total_supply() == supply
    assert ledger.balance_of(funded.enterprise.address) == 1_000 * ONE_TOKEN


def test_escrow_is_set_once_by_the_admin(ledger: Ledger, actors: Actors) -> None:
    with reverts(
        "AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("DEFAULT_ADMIN_ROLE")
    ):
        ledger.set_escrow(actors.other, actors.other.address)
    with reverts("ComputeTokenEscrowAlreadySet", escrow=ledger.settlement.address):
        ledger.set_escrow(actors.operator, actors.other.address)
    assert ledger.escrow_address() == ledger.settlement.address


def test_set_escrow_on_a_fresh_token_emits_escrow_set(ledger: Ledger, actors: Actors) -> None:
    from ledger.chain.deploy import deploy_contract

    sender = ledger.sender(actors.operator)
    address, _ = deploy_contract(sender, "ComputeToken", actors.operator.address)
    token = ledger.w3.eth.contract(address=address, abi=ledger.token.abi)
    with reverts("ComputeTokenInvalidEscrow", escrow=ZERO_ADDRESS):
        ledger._transact(actors.operator, token.functions.setEscrow(ZERO_ADDRESS))

    tx = ledger._transact(actors.operator, token.functions.setEscrow(actors.other.address))

    assert events(token.events.EscrowSet, tx) == [{"escrow": actors.other.address}]
    assert token.functions.escrow().call() == actors.other.address


def test_direct_transfer_into_escrow_is_refused(ledger: Ledger, funded: Actors) -> None:
    with reverts("ComputeTokenDirectEscrowTransfer", **{"from": funded.enterprise.address, "value": ONE_TOKEN}):
        ledger.transfer(funded.enterprise, ledger.settlement.address, ONE_TOKEN)
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)
    ledger.approve(funded.enterprise, funded.developer.address, ONE_TOKEN)
    move = ledger.token.functions.transferFrom(funded.enterprise.address, ledger.settlement.address, ONE_TOKEN)
    with reverts("ComputeTokenDirectEscrowTransfer", **{"from": funded.enterprise.address, "value": ONE_TOKEN}):
        ledger._transact(funded.developer, move)
    assert ledger.balance_of(ledger.settlement.address) == 0
    assert ledger.total_escrowed() == 0


def test_minting_into_escrow_needs_the_depositor_role(ledger: Ledger, funded: Actors) -> None:
    operator = funded.operator  # a minter, but not a depositor on Settlement
    with reverts("ComputeTokenDirectEscrowTransfer", **{"from": operator.address, "value": ONE_TOKEN}):
        ledger.mint(operator, ledger.settlement.address, ONE_TOKEN)
    assert ledger.balance_of(ledger.settlement.address) == ledger.total_escrowed() == 0

    ledger.grant_role(operator, "DEPOSITOR_ROLE", operator.address)
    ledger.mint(operator, ledger.settlement.address, ONE_TOKEN)
    assert ledger.balance_of(ledger.settlement.address) == ONE_TOKEN


def test_escrow_holds_tokens_without_being_allowlisted(ledger: Ledger, funded: Actors) -> None:
    assert not ledger.is_allowlisted(ledger.settlement.address)

    tx = ledger.deposit(funded.enterprise, 5 * ONE_TOKEN, permit=False)

    assert events(ledger.token.events.Transfer, tx) == [
        {"from": funded.enterprise.address, "to": ledger.settlement.address, "value": 5 * ONE_TOKEN}
    ]
    assert ledger.balance_of(ledger.settlement.address) == 5 * ONE_TOKEN
