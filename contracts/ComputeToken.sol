// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

/// @notice One redemption to apply: burn up to `amount` of `payer`'s tokens on behalf of `spender`.
struct RedemptionItem {
    address payer;
    address spender;
    uint256 amount;
}

/// @title ComputeToken
/// @notice The prepaid compute token of a permissioned Sluice ledger (18 decimals).
/// @dev Tokens may only be minted or transferred to allowlisted accounts. Only holders of
/// REDEEMER_ROLE (the Settlement contract) burn usage, spending the payer's ERC-20 allowance
/// to the spender when the two differ.
contract ComputeToken is ERC20, ERC20Burnable, ERC20Permit, AccessControl, Pausable {
    /// @notice An account was added to (`allowed` true) or removed from the allowlist.
    event AllowlistUpdated(address indexed account, bool allowed);

    /// @notice `account` is not allowlisted and may not receive or send tokens.
    error ComputeTokenNotAllowlisted(address account);

    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");
    bytes32 public constant REDEEMER_ROLE = keccak256("REDEEMER_ROLE");
    bytes32 public constant COMPLIANCE_ROLE = keccak256("COMPLIANCE_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    bytes32 public constant AUDITOR_ROLE = keccak256("AUDITOR_ROLE");

    /// @notice Whether an account may hold and move tokens.
    mapping(address account => bool) public isAllowlisted;

    constructor(address admin) ERC20("Sluice Compute Token", "SCT") ERC20Permit("Sluice Compute Token") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COMPLIANCE_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
    }

    /// @notice Mints `amount` base units to `to`.
    /// @dev `to` must be allowlisted; the caller must hold MINTER_ROLE.
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }

    /// @notice Adds or removes `account` from the allowlist.
    /// @dev Removing an account freezes its balance; usage it already owes can still be redeemed.
    function setAllowlisted(address account, bool allowed) external onlyRole(COMPLIANCE_ROLE) {
        isAllowlisted[account] = allowed;
        emit AllowlistUpdated(account, allowed);
    }

    /// @notice Stops every mint, transfer and burn until `unpause`.
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @notice Resumes mints, transfers and burns.
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    /// @notice Burns, for each item, as much of `amount` as the payer's balance (and, when the
    /// spender is not the payer, the spender's allowance) covers.
    /// @dev Never reverts for a short payer: the caller reads `paid[i] < items[i].amount` as a
    /// shortfall. The caller must hold REDEEMER_ROLE.
    function redeemBatch(RedemptionItem[] calldata items)
        external
        onlyRole(REDEEMER_ROLE)
        returns (uint256[] memory paid)
    {
        // Checked once for the whole batch; burns skip the allowlist, so the per-item hook is bypassed.
        _requireNotPaused();
        paid = new uint256[](items.length);
        for (uint256 i = 0; i < items.length; ++i) {
            address payer = items[i].payer;
            address spender = items[i].spender;
            uint256 amount = items[i].amount;
            uint256 balance = balanceOf(payer);
            if (balance < amount) amount = balance;
            if (spender != payer) {
                uint256 allowed = allowance(payer, spender);
                if (allowed < amount) amount = allowed;
                // Cannot underflow: amount <= allowed. Infinite allowances stay infinite, as in OZ.
                unchecked {
                    if (amount != 0 && allowed != type(uint256).max) _approve(payer, spender, allowed - amount, false);
                }
            }
            if (amount != 0) ERC20._update(payer, address(0), amount);
            paid[i] = amount;
        }
    }

    /// @dev Every balance change passes here: enforces pause and the allowlist for recipients
    /// and for senders of transfers (burns from a delisted account stay possible).
    function _update(address from, address to, uint256 value) internal override {
        _requireNotPaused();
        if (to != address(0)) {
            if (!isAllowlisted[to]) revert ComputeTokenNotAllowlisted(to);
            if (from != address(0) && !isAllowlisted[from]) revert ComputeTokenNotAllowlisted(from);
        }
        super._update(from, to, value);
    }
}
