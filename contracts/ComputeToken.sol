// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

/// @title ComputeToken
/// @notice The prepaid compute token of a permissioned Sluice ledger (18 decimals).
/// @dev Tokens may only be minted or transferred to allowlisted accounts, or into the escrow
/// contract (Settlement) through its own deposit paths. The only burn path is `burnEscrowed`,
/// by the escrow contract of tokens it holds, so every burn is a settlement.
contract ComputeToken is ERC20, ERC20Permit, AccessControl, Pausable {
    /// @notice An account was added to (`allowed` true) or removed from the allowlist.
    event AllowlistUpdated(address indexed account, bool allowed);
    /// @notice `escrow` (the Settlement contract) now holds escrowed tokens and is the only burner.
    event EscrowSet(address indexed escrow);

    /// @notice `account` is not allowlisted and may not receive or send tokens.
    error ComputeTokenNotAllowlisted(address account);
    /// @notice The escrow contract is set once; it is `escrow` already.
    error ComputeTokenEscrowAlreadySet(address escrow);
    /// @notice The escrow contract cannot be the zero address.
    error ComputeTokenInvalidEscrow(address escrow);
    /// @notice Only the escrow contract `escrow` may burn; `caller` is not it.
    error ComputeTokenNotEscrow(address caller, address escrow);
    /// @notice `from` tried to move `value` into the escrow contract outside its deposit paths.
    error ComputeTokenDirectEscrowTransfer(address from, uint256 value);

    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");
    bytes32 public constant REDEEMER_ROLE = keccak256("REDEEMER_ROLE");
    bytes32 public constant COMPLIANCE_ROLE = keccak256("COMPLIANCE_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    bytes32 public constant AUDITOR_ROLE = keccak256("AUDITOR_ROLE");
    /// @dev Settlement's role for credit of tokens minted into it; only its holders mint there.
    bytes32 private constant DEPOSITOR_ROLE = keccak256("DEPOSITOR_ROLE");

    /// @notice Whether an account may hold and move tokens.
    mapping(address account => bool) public isAllowlisted;
    /// @notice The escrow contract (Settlement); zero until `setEscrow`.
    address public escrow;

    constructor(address admin) ERC20("Sluice Compute Token", "SCT") ERC20Permit("Sluice Compute Token") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COMPLIANCE_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
    }

    /// @notice Mints `amount` base units to `to`.
    /// @dev `to` must be allowlisted, or the escrow contract when the caller also holds the
    /// escrow's DEPOSITOR_ROLE (it credits the mint to an account in the same transaction, so
    /// escrow balances keep summing to what the escrow holds); the caller must hold MINTER_ROLE.
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        address escrow_ = escrow;
        if (to == escrow_ && escrow_ != address(0) && !IAccessControl(escrow_).hasRole(DEPOSITOR_ROLE, msg.sender)) {
            revert ComputeTokenDirectEscrowTransfer(msg.sender, amount);
        }
        _mint(to, amount);
    }

    /// @notice Adds or removes `account` from the allowlist.
    /// @dev Removing an account freezes its wallet balance; its escrow can still pay for usage.
    function setAllowlisted(address account, bool allowed) external onlyRole(COMPLIANCE_ROLE) {
        isAllowlisted[account] = allowed;
        emit AllowlistUpdated(account, allowed);
    }

    /// @notice Names the escrow contract, once.
    /// @dev The escrow contract holds tokens without being allowlisted and alone may burn
    /// (it still needs REDEEMER_ROLE). Only DEFAULT_ADMIN_ROLE.
    function setEscrow(address escrow_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (escrow != address(0)) revert ComputeTokenEscrowAlreadySet(escrow);
        if (escrow_ == address(0)) revert ComputeTokenInvalidEscrow(escrow_);
        escrow = escrow_;
        emit EscrowSet(escrow_);
    }

    /// @notice Stops every mint, transfer and burn until `unpause`.
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @notice Resumes mints, transfers and burns.
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    /// @notice Burns `amount` of the tokens the escrow contract holds.
    /// @dev Only the escrow contract holding REDEEMER_ROLE: it burns settled usage from escrow.
    function burnEscrowed(uint256 amount) external onlyRole(REDEEMER_ROLE) {
        if (msg.sender != escrow) revert ComputeTokenNotEscrow(msg.sender, escrow);
        _burn(msg.sender, amount);
    }

    /// @dev Every balance change passes here: enforces pause, the allowlist for recipients and
    /// senders of transfers (the escrow contract is exempt), and lets tokens into escrow only
    /// by mint or when the escrow contract itself pulls them (its deposit paths).
    function _update(address from, address to, uint256 value) internal override {
        _requireNotPaused();
        if (to != address(0)) {
            address escrow_ = escrow;
            if (to == escrow_) {
                if (from != address(0) && msg.sender != escrow_) revert ComputeTokenDirectEscrowTransfer(from, value);
            } else if (!isAllowlisted[to]) {
                revert ComputeTokenNotAllowlisted(to);
            }
            if (from != address(0) && from != escrow_ && !isAllowlisted[from]) revert ComputeTokenNotAllowlisted(from);
        }
        super._update(from, to, value);
    }
}
