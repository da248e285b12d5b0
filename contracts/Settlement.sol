// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ComputeToken, RedemptionItem} from "./ComputeToken.sol";

/// @title Settlement
/// @notice Burns metered usage in batches. Each batch commits to the Merkle root of its signed
/// receipts, settles once per batch id, and pays what each payer can instead of reverting.
/// @dev Receipt leaves follow OpenZeppelin StandardMerkleTree:
/// keccak256(bytes.concat(keccak256(abi.encode(jobId, payer, spender, cost)))).
contract Settlement is AccessControl {
    /// @notice A batch of `items` receipts with root `receiptsRoot` settled, burning `total`.
    event BatchSettled(bytes32 indexed batchId, bytes32 receiptsRoot, uint256 items, uint256 total);
    /// @notice `amount` of `payer`'s tokens were burned for usage by `spender` in `batchId`.
    event Redeemed(bytes32 indexed batchId, address indexed payer, address indexed spender, uint256 amount);
    /// @notice `payer` owed `owed` for `spender`'s usage in `batchId` but only `paid` could be burned.
    event Shortfall(
        bytes32 indexed batchId, address indexed payer, address indexed spender, uint256 owed, uint256 paid
    );

    /// @notice `batchId` has been settled already.
    error SettlementBatchAlreadySettled(bytes32 batchId);
    /// @notice A batch needs a non-zero id, a non-zero receipts root and at least one item.
    error SettlementInvalidBatch(bytes32 batchId, bytes32 receiptsRoot, uint256 items);

    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    ComputeToken public immutable token;

    /// @notice The receipts root of each settled batch (zero while unsettled).
    mapping(bytes32 batchId => bytes32 receiptsRoot) public receiptsRootOf;

    constructor(ComputeToken token_, address admin) {
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Settles batch `batchId`: burns each item's amount from its payer as far as the
    /// payer's balance and allowance cover, emitting Redeemed and, for any gap, Shortfall.
    /// @dev Idempotent by `batchId`: a second submission reverts with SettlementBatchAlreadySettled.
    /// `receiptCount` is the number of receipts under `receiptsRoot`; items aggregate them per
    /// (payer, spender). Only SETTLER_ROLE.
    function settle(bytes32 batchId, bytes32 receiptsRoot, uint256 receiptCount, RedemptionItem[] calldata items)
        external
        onlyRole(SETTLER_ROLE)
        returns (uint256 total)
    {
        if (batchId == bytes32(0) || receiptsRoot == bytes32(0) || items.length == 0) {
            revert SettlementInvalidBatch(batchId, receiptsRoot, items.length);
        }
        if (receiptsRootOf[batchId] != bytes32(0)) revert SettlementBatchAlreadySettled(batchId);
        receiptsRootOf[batchId] = receiptsRoot;

        uint256[] memory paid = token.redeemBatch(items);
        for (uint256 i = 0; i < items.length; ++i) {
            RedemptionItem calldata item = items[i];
            uint256 amount = paid[i];
            if (amount != 0) emit Redeemed(batchId, item.payer, item.spender, amount);
            if (amount < item.amount) emit Shortfall(batchId, item.payer, item.spender, item.amount, amount);
            // Cannot overflow: every amount was burned from a supply that fits in uint256.
            unchecked {
                total += amount;
            }
        }
        emit BatchSettled(batchId, receiptsRoot, receiptCount, total);
    }

    /// @notice Whether `batchId` has been settled.
    function isSettled(bytes32 batchId) external view returns (bool) {
        return receiptsRootOf[batchId] != bytes32(0);
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
}
