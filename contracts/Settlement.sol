// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ComputeToken} from "./ComputeToken.sol";

/// @title Settlement
/// @notice Holds compute tokens in escrow accounts, the budgets payers give spender keys, and
/// burns metered usage in batches. Escrow leaves only `unlockPeriod` after a withdrawal request
/// and a budget cut takes effect only `unlockPeriod` after it is made, so usage admitted against
/// them is paid. Each batch commits to the Merkle root of its signed receipts and settles once
/// per root; it pays what each payer can instead of reverting.
/// @dev Receipt leaves follow OpenZeppelin StandardMerkleTree:
/// keccak256(bytes.concat(keccak256(abi.encode(jobId, payer, spender, cost)))).
/// Invariant: the sum of every escrow balance == `totalEscrowed` == token.balanceOf(this).
contract Settlement is AccessControl, Pausable {
    /// @notice One (payer, spender) line of a batch: `amount` owed for `spender`'s usage.
    struct Item {
        address payer;
        address spender;
        uint256 amount;
    }

    /// @notice `amount` was credited to `account`'s escrow, paid by `from`.
    event Deposited(address indexed account, address indexed from, uint256 amount);
    /// @notice `account` asked to withdraw `amount` (replacing any earlier request) once `unlocksAt` passes.
    event WithdrawalRequested(address indexed account, uint256 amount, uint64 unlocksAt);
    /// @notice `amount` left `account`'s escrow for its wallet.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice `payer` set `spender`'s budget to `amount`, in force from `effectiveAt`.
    event BudgetSet(address indexed payer, address indexed spender, uint256 amount, uint64 effectiveAt);
    /// @notice A batch of `items` receipts with root `receiptsRoot` settled, burning `total`.
    event BatchSettled(bytes32 indexed batchId, bytes32 receiptsRoot, uint256 items, uint256 total);
    /// @notice `amount` of `payer`'s escrow was burned for usage by `spender` in `batchId`.
    event Redeemed(bytes32 indexed batchId, address indexed payer, address indexed spender, uint256 amount);
    /// @notice `payer` owed `owed` for `spender`'s usage in `batchId` but only `paid` could be burned.
    event Shortfall(
        bytes32 indexed batchId, address indexed payer, address indexed spender, uint256 owed, uint256 paid
    );
    /// @notice Withdrawals requested and budget cuts made from now on wait `unlockPeriod` seconds.
    event UnlockPeriodSet(uint64 unlockPeriod);

    /// @notice The batch `batchId` (of receipts root `receiptsRoot`) has been settled already.
    error SettlementBatchAlreadySettled(bytes32 batchId, bytes32 receiptsRoot);
    /// @notice A batch needs a non-zero receipts root, at least one item and no fewer receipts than items.
    error SettlementInvalidBatch(bytes32 receiptsRoot, uint256 receiptCount, uint256 items);
    /// @notice A deposit, credit or withdrawal must move more than zero tokens.
    error SettlementZeroAmount();
    /// @notice `account` is not allowlisted on the token and cannot hold escrow.
    error SettlementNotAllowlisted(address account);
    /// @notice A credit of `amount` exceeds the `unbacked` tokens minted into escrow but not yet credited.
    error SettlementUnbackedCredit(uint256 amount, uint256 unbacked);
    /// @notice `account` asked to withdraw `amount` but holds only `escrow`.
    error SettlementWithdrawalAboveEscrow(address account, uint256 amount, uint256 escrow);
    /// @notice `account` has no withdrawal pending.
    error SettlementNoWithdrawalPending(address account);
    /// @notice `account`'s withdrawal unlocks at `unlocksAt`; it is `now`.
    error SettlementWithdrawalLocked(address account, uint64 unlocksAt, uint64 now);
    /// @notice A budget of `amount` is above the largest budget, `max`.
    error SettlementBudgetTooLarge(uint256 amount, uint256 max);
    /// @notice `spender` cannot be given a budget (zero address, or the payer itself).
    error SettlementInvalidSpender(address spender);
    /// @notice `unlockPeriod` is outside [`min`, `max`] seconds.
    error SettlementUnlockPeriodOutOfRange(uint64 unlockPeriod, uint64 min, uint64 max);

    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    bytes32 public constant DEPOSITOR_ROLE = keccak256("DEPOSITOR_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    /// @notice The largest budget a payer can give a spender.
    uint256 public constant MAX_BUDGET = type(uint96).max;
    uint64 public constant MIN_UNLOCK_PERIOD = 1 minutes;
    uint64 public constant MAX_UNLOCK_PERIOD = 30 days;

    struct Account {
        uint128 balance; // escrowed, pending withdrawal included
        uint128 pending; // requested for withdrawal; always <= balance
        uint64 unlocksAt;
    }

    struct Budget {
        uint96 remaining; // what settlement may still burn for the spender
        uint96 scheduled; // a pending cut's amount (meaningful while effectiveAt != 0)
        uint64 effectiveAt; // when the pending cut applies; 0 when none is pending
    }

    ComputeToken public immutable token;
    /// @notice Seconds a withdrawal request or a budget cut waits before it takes effect.
    uint64 public unlockPeriod;
    /// @notice The sum of every escrow balance; equals the tokens this contract holds.
    uint256 public totalEscrowed;
    /// @notice The receipts root of each settled batch (zero while unsettled).
    mapping(bytes32 batchId => bytes32 receiptsRoot) public receiptsRootOf;

    mapping(address account => Account) private _accounts;
    mapping(address payer => mapping(address spender => Budget)) private _budgets;

    constructor(ComputeToken token_, address admin, uint64 unlockPeriod_) {
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        _setUnlockPeriod(unlockPeriod_);
    }

    // -- escrow ----------------------------------------------------------------------------

    /// @notice Moves `amount` of the caller's tokens into its escrow.
    /// @dev The caller must have approved this contract for `amount` on the token.
    function deposit(uint256 amount) external whenNotPaused {
        _pull(msg.sender, msg.sender, amount);
    }

    /// @notice Moves `amount` of the caller's tokens into its escrow, approving with an EIP-2612 permit.
    /// @dev A permit already used (for example front-run) is ignored when its allowance is in
    /// place, so the deposit cannot be griefed.
    function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        whenNotPaused
    {
        try token.permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _pull(msg.sender, msg.sender, amount);
    }

    /// @notice Moves `amount` of the caller's tokens into `account`'s escrow (anyone may fund anyone).
    /// @dev `account` must be allowlisted; the caller must have approved this contract.
    function depositFor(address account, uint256 amount) external whenNotPaused {
        if (!token.isAllowlisted(account)) revert SettlementNotAllowlisted(account);
        _pull(msg.sender, account, amount);
    }

    /// @notice Credits `account` with `amount` tokens already minted into this contract.
    /// @dev For the sale and operator issuance, which mint here and credit in one transaction.
    /// Only DEPOSITOR_ROLE; never credits more than was minted in and not yet credited.
    function creditMinted(address account, uint256 amount) external onlyRole(DEPOSITOR_ROLE) whenNotPaused {
        if (amount == 0) revert SettlementZeroAmount();
        if (!token.isAllowlisted(account)) revert SettlementNotAllowlisted(account);
        uint256 unbacked = token.balanceOf(address(this)) - totalEscrowed;
        if (unbacked < amount) revert SettlementUnbackedCredit(amount, unbacked);
        _credit(account, msg.sender, amount);
    }

    /// @notice Asks to withdraw `amount` of the caller's escrow once `unlockPeriod` has passed.
    /// @dev Replaces any earlier request and restarts the clock; 0 cancels. Until withdrawn, the
    /// tokens can still be burned for usage (the request shrinks with the balance).
    function requestWithdrawal(uint256 amount) external whenNotPaused {
        Account storage account = _accounts[msg.sender];
        uint256 balance = account.balance;
        if (amount > balance) revert SettlementWithdrawalAboveEscrow(msg.sender, amount, balance);
        uint64 unlocksAt = amount == 0 ? 0 : uint64(block.timestamp) + unlockPeriod;
        // Cannot truncate: amount <= balance, a uint128.
        account.pending = uint128(amount);
        account.unlocksAt = unlocksAt;
        emit WithdrawalRequested(msg.sender, amount, unlocksAt);
    }

    /// @notice Sends the caller's unlocked withdrawal to its wallet.
    /// @dev Reverts while the request is still locked; the wallet must be allowlisted.
    function withdraw() external whenNotPaused {
        Account storage account = _accounts[msg.sender];
        uint256 amount = account.pending;
        if (amount == 0) revert SettlementNoWithdrawalPending(msg.sender);
        uint64 unlocksAt = account.unlocksAt;
        if (block.timestamp < unlocksAt) {
            revert SettlementWithdrawalLocked(msg.sender, unlocksAt, uint64(block.timestamp));
        }
        // Cannot underflow: pending <= balance and every balance is part of totalEscrowed.
        unchecked {
            account.balance -= uint128(amount);
            totalEscrowed -= amount;
        }
        account.pending = 0;
        account.unlocksAt = 0;
        token.transfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    // -- budgets ---------------------------------------------------------------------------

    /// @notice Sets what `spender` may spend from the caller's escrow to `amount`.
    /// @dev A raise (or equal) applies at once and cancels a pending cut; a cut applies
    /// `unlockPeriod` later, replacing any pending cut. While a cut is pending, settlement spends
    /// the current budget down and the scheduled amount shrinks by the same spend.
    function setBudget(address spender, uint256 amount) external whenNotPaused {
        if (amount > MAX_BUDGET) revert SettlementBudgetTooLarge(amount, MAX_BUDGET);
        if (spender == address(0) || spender == msg.sender) revert SettlementInvalidSpender(spender);
        Budget memory budget = _effective(_budgets[msg.sender][spender]);
        uint64 effectiveAt;
        // Cannot truncate: amount <= MAX_BUDGET.
        if (amount >= budget.remaining) {
            effectiveAt = uint64(block.timestamp);
            budget = Budget(uint96(amount), 0, 0);
        } else {
            effectiveAt = uint64(block.timestamp) + unlockPeriod;
            budget.scheduled = uint96(amount);
            budget.effectiveAt = effectiveAt;
        }
        _budgets[msg.sender][spender] = budget;
        emit BudgetSet(msg.sender, spender, amount, effectiveAt);
    }

    // -- settlement ------------------------------------------------------------------------

    /// @notice Settles the batch of receipts under `receiptsRoot`: burns each item's amount from
    /// its payer's escrow as far as the escrow and (for a spender other than the payer) the budget
    /// cover, emitting Redeemed and, for any gap, Shortfall.
    /// @dev Settles once per root (batchId = keccak256(abi.encodePacked(receiptsRoot))); a second
    /// submission reverts with SettlementBatchAlreadySettled. `receiptCount` is the number of
    /// receipts under the root; items aggregate them per (payer, spender). One token burn per
    /// batch. Only SETTLER_ROLE.
    function settle(bytes32 receiptsRoot, uint256 receiptCount, Item[] calldata items)
        external
        onlyRole(SETTLER_ROLE)
        whenNotPaused
        returns (bytes32 batchId, uint256 total)
    {
        if (receiptsRoot == bytes32(0) || items.length == 0 || receiptCount < items.length) {
            revert SettlementInvalidBatch(receiptsRoot, receiptCount, items.length);
        }
        batchId = keccak256(abi.encodePacked(receiptsRoot));
        if (receiptsRootOf[batchId] != bytes32(0)) revert SettlementBatchAlreadySettled(batchId, receiptsRoot);
        receiptsRootOf[batchId] = receiptsRoot;

        for (uint256 i = 0; i < items.length; ++i) {
            Item calldata item = items[i];
            uint256 paid = _redeem(item.payer, item.spender, item.amount);
            if (paid != 0) emit Redeemed(batchId, item.payer, item.spender, paid);
            if (paid < item.amount) emit Shortfall(batchId, item.payer, item.spender, item.amount, paid);
            // Cannot overflow: every amount paid came out of totalEscrowed.
            unchecked {
                total += paid;
            }
        }
        if (total != 0) {
            // Cannot underflow: total was taken out of escrow balances that sum to totalEscrowed.
            unchecked {
                totalEscrowed -= total;
            }
            token.burnEscrowed(total);
        }
        emit BatchSettled(batchId, receiptsRoot, receiptCount, total);
    }

    // -- admin -----------------------------------------------------------------------------

    /// @notice Sets the wait of withdrawal requests and budget cuts made from now on.
    /// @dev Within [MIN_UNLOCK_PERIOD, MAX_UNLOCK_PERIOD]; pending requests and cuts keep their
    /// times. The service's hold lifetime plus settlement bound must stay below it. Only DEFAULT_ADMIN_ROLE.
    function setUnlockPeriod(uint64 unlockPeriod_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setUnlockPeriod(unlockPeriod_);
    }

    /// @notice Stops deposits, withdrawals, budget changes and settlement until `unpause`.
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @notice Resumes deposits, withdrawals, budget changes and settlement.
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    // -- views -----------------------------------------------------------------------------

    /// @notice `account`'s escrow, pending withdrawal included.
    function escrowOf(address account) external view returns (uint256) {
        return _accounts[account].balance;
    }

    /// @notice `account`'s requested withdrawal and when it unlocks (0, 0 when none).
    function pendingWithdrawalOf(address account) external view returns (uint256 amount, uint64 unlocksAt) {
        Account storage a = _accounts[account];
        return (a.pending, a.unlocksAt);
    }

    /// @notice What `spender` may spend from `payer`'s escrow now (`remaining`), and a pending cut
    /// to `scheduled` that applies at `effectiveAt` (0, 0 when none is pending).
    /// @dev A cut whose time has come is reported applied.
    function budgetOf(address payer, address spender)
        external
        view
        returns (uint256 remaining, uint256 scheduled, uint64 effectiveAt)
    {
        Budget memory budget = _effective(_budgets[payer][spender]);
        return (budget.remaining, budget.scheduled, budget.effectiveAt);
    }

    /// @notice Whether `batchId` has been settled.
    function isSettled(bytes32 batchId) external view returns (bool) {
        return receiptsRootOf[batchId] != bytes32(0);
    }

    /// @notice The batch id a receipts root settles under.
    function batchIdOf(bytes32 receiptsRoot) external pure returns (bytes32) {
        return keccak256(abi.encodePacked(receiptsRoot));
    }

    /// @notice Whether the receipt (jobId, payer, spender, cost) is in settled batch `batchId`.
    /// @dev `proof` is the receipt's StandardMerkleTree proof.
    function verifyReceipt(
        bytes32 batchId,
        bytes32 jobId,
        address payer,
        address spender,
        uint256 cost,
        bytes32[] calldata proof
    ) external view returns (bool) {
        bytes32 root = receiptsRootOf[batchId];
        if (root == bytes32(0)) return false;
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(jobId, payer, spender, cost))));
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }

    // -- internal --------------------------------------------------------------------------

    function _pull(address from, address account, uint256 amount) private {
        if (amount == 0) revert SettlementZeroAmount();
        token.transferFrom(from, address(this), amount);
        _credit(account, from, amount);
    }

    function _credit(address account, address from, uint256 amount) private {
        Account storage a = _accounts[account];
        a.balance = SafeCast.toUint128(a.balance + amount);
        totalEscrowed += amount;
        emit Deposited(account, from, amount);
    }

    /// @dev Burns (in the books; the token burn is once per batch) up to `owed` of `payer`'s
    /// escrow within `spender`'s budget; returns what was paid.
    function _redeem(address payer, address spender, uint256 owed) private returns (uint256 paid) {
        Account storage account = _accounts[payer];
        uint256 balance = account.balance;
        paid = owed < balance ? owed : balance;
        if (paid == 0) return 0;
        if (spender != payer) {
            Budget storage slot = _budgets[payer][spender];
            Budget memory budget = _effective(slot);
            if (budget.remaining < paid) paid = budget.remaining;
            if (paid == 0) return 0;
            // Cannot underflow: paid <= remaining; paid fits uint96 because remaining does.
            unchecked {
                budget.remaining -= uint96(paid);
                if (budget.effectiveAt != 0) {
                    budget.scheduled = budget.scheduled > paid ? budget.scheduled - uint96(paid) : 0;
                }
            }
            _budgets[payer][spender] = budget;
        }
        // Cannot underflow: paid <= balance. Pending withdrawals shrink with the balance.
        unchecked {
            uint128 left = uint128(balance - paid);
            uint128 pending = account.pending;
            account.balance = left;
            if (pending > left) account.pending = left;
        }
    }

    /// @dev The budget with a pending cut applied once its time has come.
    function _effective(Budget memory budget) private view returns (Budget memory) {
        if (budget.effectiveAt != 0 && block.timestamp >= budget.effectiveAt) {
            if (budget.scheduled < budget.remaining) budget.remaining = budget.scheduled;
            budget.scheduled = 0;
            budget.effectiveAt = 0;
        }
        return budget;
    }

    function _setUnlockPeriod(uint64 unlockPeriod_) private {
        if (unlockPeriod_ < MIN_UNLOCK_PERIOD || unlockPeriod_ > MAX_UNLOCK_PERIOD) {
            revert SettlementUnlockPeriodOutOfRange(unlockPeriod_, MIN_UNLOCK_PERIOD, MAX_UNLOCK_PERIOD);
        }
        unlockPeriod = unlockPeriod_;
        emit UnlockPeriodSet(unlockPeriod_);
    }
}
