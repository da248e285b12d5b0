// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {ComputeToken} from "../ComputeToken.sol";
import {Settlement} from "../Settlement.sol";
import {SluiceTest} from "./SluiceTest.sol";

/// @notice A deployment of ComputeToken + Settlement wired as `ledger.chain.deploy` wires them, with
/// this contract as admin, minter, depositor and settler.
abstract contract LedgerFixture is SluiceTest {
    uint64 internal constant UNLOCK = 15 minutes;

    ComputeToken internal token;
    Settlement internal settlement;

    function deployLedger() internal {
        token = new ComputeToken(address(this));
        settlement = new Settlement(token, address(this), UNLOCK);
        token.setEscrow(address(settlement));
        token.grantRole(token.MINTER_ROLE(), address(this));
        token.grantRole(token.REDEEMER_ROLE(), address(settlement));
        settlement.grantRole(settlement.SETTLER_ROLE(), address(this));
        settlement.grantRole(settlement.DEPOSITOR_ROLE(), address(this));
    }

    /// @notice Allowlists `account` and puts `amount` into its escrow (minted in and credited).
    function fundEscrow(address account, uint256 amount) internal {
        token.setAllowlisted(account, true);
        if (amount == 0) return;
        token.mint(address(settlement), amount);
        settlement.creditMinted(account, amount);
    }

    function one(address payer, address spender, uint256 amount) internal pure returns (Settlement.Item[] memory items) {
        items = new Settlement.Item[](1);
        items[0] = Settlement.Item(payer, spender, amount);
    }
}

/// @notice Fuzz twins of the Python behaviour suites: escrow and budget bound every burn, a root
/// settles once, withdrawals and cuts wait the unlock period, nothing enters escrow directly.
contract SettlementFuzzTest is LedgerFixture {
    address internal constant PAYER = address(0xA11CE);
    address internal constant SPENDER = address(0xB0B);

    function setUp() public {
        deployLedger();
    }

    function testFuzz_settlePaysWithinEscrowAndBudget(uint96 escrow, uint96 budget, uint128 owed, bool ownKey)
        public
    {
        fundEscrow(PAYER, escrow);
        if (budget != 0) {
            vm.prank(PAYER);
            settlement.setBudget(SPENDER, budget);
        }
        address spender = ownKey ? PAYER : SPENDER;
        uint256 supply = token.totalSupply();

        (, uint256 total) = settlement.settle(keccak256("root"), 1, one(PAYER, spender, owed));

        uint256 cap = ownKey ? escrow : (escrow < budget ? escrow : budget);
        uint256 want = owed < cap ? owed : cap;
        assertEq(total, want, "paid = min(owed, escrow, budget)");
        assertEq(settlement.escrowOf(PAYER), uint256(escrow) - want, "escrow spent");
        assertEq(token.totalSupply(), supply - want, "burned");
        assertEq(token.balanceOf(address(settlement)), settlement.totalEscrowed(), "escrow conserved");
        (uint256 remaining,,) = settlement.budgetOf(PAYER, SPENDER);
        assertEq(remaining, ownKey ? budget : uint256(budget) - want, "budget spent down");
    }

    function testFuzz_noBurnWithoutEscrow(uint96 wallet, uint128 owed, bool ownKey) public {
        token.setAllowlisted(PAYER, true);
        token.mint(PAYER, wallet); // tokens in the wallet are never burned
        vm.prank(PAYER);
        settlement.setBudget(SPENDER, type(uint96).max);
        uint256 supply = token.totalSupply();

        (, uint256 total) = settlement.settle(keccak256("r"), 1, one(PAYER, ownKey ? PAYER : SPENDER, owed));

        assertEq(total, 0, "nothing paid");
        assertEq(token.totalSupply(), supply, "nothing burned");
        assertEq(token.balanceOf(PAYER), wallet, "wallet untouched");
    }

    function testFuzz_noBurnWithoutBudget(uint96 escrow, uint128 owed, address spender) public {
        vm.assume(spender != PAYER);
        fundEscrow(PAYER, escrow);
        uint256 supply = token.totalSupply();

        (, uint256 total) = settlement.settle(keccak256("r"), 1, one(PAYER, spender, owed));

        assertEq(total, 0, "nothing paid");
        assertEq(token.totalSupply(), supply, "nothing burned");
        assertEq(settlement.escrowOf(PAYER), escrow, "escrow untouched");
    }

    function testFuzz_aRootSettlesOnce(bytes32 root, uint96 escrow, uint96 owed) public {
        vm.assume(root != bytes32(0));
        fundEscrow(PAYER, escrow);
        (bytes32 batchId,) = settlement.settle(root, 1, one(PAYER, PAYER, owed));
        assertEq(batchId, keccak256(abi.encodePacked(root)), "batch id");
        uint256 supply = token.totalSupply();

        vm.expectRevert(abi.encodeWithSelector(Settlement.SettlementBatchAlreadySettled.selector, batchId, root));
        settlement.settle(root, 3, one(PAYER, PAYER, 1));
        assertEq(token.totalSupply(), supply, "a replay burns nothing");
    }

    function testFuzz_withdrawalWaitsTheUnlockPeriod(uint96 escrow, uint96 amount, uint32 wait) public {
        fundEscrow(PAYER, escrow);
        amount = uint96(bound(amount, 1, escrow == 0 ? 1 : escrow));
        vm.assume(escrow != 0);
        vm.warp(1_000_000);
        vm.prank(PAYER);
        settlement.requestWithdrawal(amount);
        uint64 unlocksAt = uint64(1_000_000 + UNLOCK);
        vm.warp(1_000_000 + uint256(wait));

        vm.prank(PAYER);
        if (wait < UNLOCK) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    Settlement.SettlementWithdrawalLocked.selector, PAYER, unlocksAt, uint64(block.timestamp)
                )
            );
            settlement.withdraw();
            assertEq(settlement.escrowOf(PAYER), escrow, "nothing left");
        } else {
            settlement.withdraw();
            assertEq(token.balanceOf(PAYER), amount, "withdrawn");
            assertEq(settlement.escrowOf(PAYER), uint256(escrow) - amount, "escrow reduced");
        }
        assertEq(token.balanceOf(address(settlement)), settlement.totalEscrowed(), "escrow conserved");
    }

    function testFuzz_pendingWithdrawalStillPays(uint96 escrow, uint96 owed) public {
        fundEscrow(PAYER, escrow);
        vm.assume(escrow != 0);
        vm.prank(PAYER);
        settlement.requestWithdrawal(escrow);

        (, uint256 total) = settlement.settle(keccak256("r"), 1, one(PAYER, PAYER, owed));

        (uint256 pending,) = settlement.pendingWithdrawalOf(PAYER);
        assertEq(total, owed < escrow ? owed : escrow, "paid from tokens waiting to leave");
        assertEq(pending, uint256(escrow) - total, "the request shrinks with the escrow");
    }

    function testFuzz_aCutWaitsAndNeverGivesBackSpend(uint96 start, uint96 cut, uint96 spend, uint32 wait) public {
        vm.assume(cut < start);
        fundEscrow(PAYER, type(uint96).max);
        vm.warp(5_000_000);
        vm.startPrank(PAYER);
        settlement.setBudget(SPENDER, start);
        settlement.setBudget(SPENDER, cut);
        vm.stopPrank();
        spend = uint96(bound(spend, 0, start));
        settlement.settle(keccak256("r"), 1, one(PAYER, SPENDER, spend));
        vm.warp(5_000_000 + uint256(wait));

        (uint256 remaining, uint256 scheduled, uint64 effectiveAt) = settlement.budgetOf(PAYER, SPENDER);
        if (wait < UNLOCK) {
            assertEq(remaining, uint256(start) - spend, "the old budget, spent down");
            assertEq(scheduled, cut > spend ? cut - spend : 0, "the cut, less the spend");
            assertEq(effectiveAt, 5_000_000 + UNLOCK, "pending until the unlock period ends");
        } else {
            assertEq(remaining, cut > spend ? cut - spend : 0, "the cut applied, less the spend");
            assertEq(scheduled, 0, "no cut pending");
            assertEq(effectiveAt, 0, "no cut pending");
        }
    }

    function testFuzz_aRaiseAppliesAtOnceAndCancelsACut(uint96 start, uint96 cut, uint96 raise) public {
        vm.assume(cut < start && raise >= start);
        vm.startPrank(PAYER);
        settlement.setBudget(SPENDER, start);
        settlement.setBudget(SPENDER, cut);
        settlement.setBudget(SPENDER, raise);
        vm.stopPrank();
        (uint256 remaining, uint256 scheduled, uint64 effectiveAt) = settlement.budgetOf(PAYER, SPENDER);
        assertEq(remaining, raise, "raised");
        assertEq(scheduled + effectiveAt, 0, "the cut is gone");
    }

    function testFuzz_budgetAboveMaxIsRefused(uint256 amount) public {
        vm.assume(amount > type(uint96).max);
        vm.prank(PAYER);
        vm.expectRevert(
            abi.encodeWithSelector(Settlement.SettlementBudgetTooLarge.selector, amount, uint256(type(uint96).max))
        );
        settlement.setBudget(SPENDER, amount);
    }

    function testFuzz_nothingEntersEscrowDirectly(uint96 amount) public {
        vm.assume(amount != 0);
        token.setAllowlisted(PAYER, true);
        token.mint(PAYER, amount);
        vm.prank(PAYER);
        vm.expectRevert(
            abi.encodeWithSelector(ComputeToken.ComputeTokenDirectEscrowTransfer.selector, PAYER, uint256(amount))
        );
        token.transfer(address(settlement), amount);

        // A minter that is not a depositor on Settlement cannot mint into it either.
        address minter = address(0x5117);
        token.grantRole(token.MINTER_ROLE(), minter);
        vm.prank(minter);
        vm.expectRevert(
            abi.encodeWithSelector(ComputeToken.ComputeTokenDirectEscrowTransfer.selector, minter, uint256(amount))
        );
        token.mint(address(settlement), amount);
        assertEq(token.balanceOf(address(settlement)), settlement.totalEscrowed(), "escrow conserved");
    }

    function testFuzz_onlyTheSettlerSettles(address caller) public {
        vm.assume(caller != address(this));
        bytes32 role = settlement.SETTLER_ROLE(); // read before the prank, which covers only the next call
        vm.prank(caller);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, caller, role));
        settlement.settle(keccak256("r"), 1, one(PAYER, PAYER, 1));
    }

    function testFuzz_onlyTheEscrowBurns(address caller, uint96 amount) public {
        vm.assume(caller != address(settlement));
        token.grantRole(token.REDEEMER_ROLE(), caller);
        vm.prank(caller);
        vm.expectRevert(
            abi.encodeWithSelector(ComputeToken.ComputeTokenNotEscrow.selector, caller, address(settlement))
        );
        token.burnEscrowed(amount);
    }
}

/// @notice Drives random deposits, withdrawals, budget changes, clock moves and settlements from a
/// few actors, keeping ghost totals the invariants compare with the chain.
contract SettlementHandler is SluiceTest {
    ComputeToken internal immutable token;
    Settlement internal immutable settlement;
    address[] public actors;

    uint256 public minted;
    uint256 public burned;
    uint256 public redeemed;
    uint256 public settledRoots;
    /// @notice Times a burn exceeded what was owed, escrowed or budgeted, or a root settled twice.
    uint256 public violations;
    bytes32[] internal _roots;

    constructor(ComputeToken token_, Settlement settlement_, address[] memory actors_) {
        token = token_;
        settlement = settlement_;
        actors = actors_;
    }

    function actorCount() external view returns (uint256) {
        return actors.length;
    }

    function mintToEscrow(uint256 who, uint256 amount) external {
        address account = actors[who % actors.length];
        amount = bound(amount, 1, 1e24);
        token.mint(address(settlement), amount);
        settlement.creditMinted(account, amount);
        minted += amount;
    }

    function deposit(uint256 who, uint256 amount) external {
        address account = actors[who % actors.length];
        amount = bound(amount, 1, 1e24);
        token.mint(account, amount);
        minted += amount;
        vm.startPrank(account);
        token.approve(address(settlement), amount);
        settlement.deposit(amount);
        vm.stopPrank();
    }

    function requestWithdrawal(uint256 who, uint256 amount) external {
        address account = actors[who % actors.length];
        amount = bound(amount, 0, settlement.escrowOf(account));
        vm.prank(account);
        settlement.requestWithdrawal(amount);
    }

    function withdraw(uint256 who) external {
        address account = actors[who % actors.length];
        (uint256 amount, uint64 unlocksAt) = settlement.pendingWithdrawalOf(account);
        if (amount == 0 || block.timestamp < unlocksAt) return;
        vm.prank(account);
        settlement.withdraw();
    }

    function setBudget(uint256 payer, uint256 spender, uint256 amount) external {
        address from = actors[payer % actors.length];
        address to = actors[spender % actors.length];
        if (from == to) return;
        vm.prank(from);
        settlement.setBudget(to, bound(amount, 0, 1e24));
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 2 * settlement.unlockPeriod()));
    }

    function settle(uint256 seed, uint256 count) external {
        count = bound(count, 1, 4);
        Settlement.Item[] memory items = new Settlement.Item[](count);
        uint256[] memory caps = new uint256[](count);
        for (uint256 i = 0; i < count; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            address payer = actors[r % actors.length];
            address spender = actors[(r >> 8) % actors.length];
            items[i] = Settlement.Item(payer, spender, bound(r >> 16, 0, 2e24));
        }
        // What each item may take at most, before the batch (items of one payer share the escrow).
        for (uint256 i = 0; i < count; ++i) {
            uint256 cap = settlement.escrowOf(items[i].payer);
            if (items[i].spender != items[i].payer) {
                (uint256 remaining,,) = settlement.budgetOf(items[i].payer, items[i].spender);
                if (remaining < cap) cap = remaining;
            }
            caps[i] = cap < items[i].amount ? cap : items[i].amount;
        }
        uint256 supply = token.totalSupply();
        bytes32 root = keccak256(abi.encode("root", seed, settledRoots));
        (, uint256 total) = settlement.settle(root, count, items);
        uint256 most;
        for (uint256 i = 0; i < count; ++i) most += caps[i];
        if (total > most) ++violations;
        burned += supply - token.totalSupply();
        redeemed += total;
        ++settledRoots;
        _roots.push(root);
    }

    function replay(uint256 which) external {
        if (_roots.length == 0) return;
        bytes32 root = _roots[which % _roots.length];
        try settlement.settle(root, 1, new Settlement.Item[](1)) {
            ++violations;
        } catch {}
    }
}

/// @notice Invariants over random sequences: supply adds up, escrow is conserved, every burn is a
/// settlement within what was owed, escrowed and budgeted, and each root settles once.
contract SettlementInvariantTest is LedgerFixture {
    SettlementHandler internal handler;

    function setUp() public {
        deployLedger();
        address[] memory actors = new address[](3);
        for (uint256 i = 0; i < actors.length; ++i) {
            actors[i] = address(uint160(0x1000 + i));
            token.setAllowlisted(actors[i], true);
        }
        handler = new SettlementHandler(token, settlement, actors);
        token.grantRole(token.MINTER_ROLE(), address(handler));
        settlement.grantRole(settlement.DEPOSITOR_ROLE(), address(handler));
        settlement.grantRole(settlement.SETTLER_ROLE(), address(handler));
        targetContract(address(handler));
    }

    function invariant_supplyIsMintedLessBurned() public view {
        assertEq(token.totalSupply(), handler.minted() - handler.burned(), "totalSupply == minted - burned");
    }

    function invariant_escrowIsConserved() public view {
        uint256 sum;
        for (uint256 i = 0; i < handler.actorCount(); ++i) {
            address account = handler.actors(i);
            sum += settlement.escrowOf(account);
            (uint256 pending,) = settlement.pendingWithdrawalOf(account);
            assertLe(pending, settlement.escrowOf(account), "pending <= escrow");
        }
        assertEq(sum, token.balanceOf(address(settlement)), "sum(escrow) == balanceOf(Settlement)");
        assertEq(sum, settlement.totalEscrowed(), "sum(escrow) == totalEscrowed");
    }

    function invariant_burnsAreRedemptions() public view {
        assertEq(handler.burned(), handler.redeemed(), "burned == sum of settled totals");
        assertEq(handler.violations(), 0, "no burn beyond owed, escrow or budget; no root twice");
    }
}
