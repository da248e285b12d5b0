// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {ComputeToken} from "./ComputeToken.sol";
import {Settlement} from "./Settlement.sol";

/// @title TokenSale
/// @notice Sells compute tokens for a payment ERC-20 at volume tiers, to the buyer's wallet or
/// straight into its Settlement escrow, and lets the operator issue tokens against an invoice or
/// bundle (to a wallet or into escrow).
/// @dev Prices are payment-token base units per whole compute token (1e18 base units);
/// a purchase of `amount` base units costs ceil(amount * price / 1e18). Purchases and issuance
/// into escrow mint into Settlement and credit the account there in the same transaction
/// (this contract holds MINTER_ROLE on the token and DEPOSITOR_ROLE on Settlement).
contract TokenSale is AccessControl {
    using SafeERC20 for IERC20;

    /// @notice A volume tier: purchases of at least `minAmount` base units pay `price` per token.
    struct Tier {
        uint256 minAmount;
        uint256 price;
    }

    /// @notice `buyer` bought `amount` base units for `cost` payment units at tier `tier`.
    event Purchased(address indexed buyer, uint256 amount, uint256 cost, uint256 tier);
    /// @notice The operator issued `amount` base units to `to` against the reference `ref`.
    event Issued(address indexed to, uint256 amount, bytes32 indexed ref);
    /// @notice The volume tiers were replaced.
    event TiersSet(Tier[] tiers);
    /// @notice Sale proceeds now go to `treasury`.
    event TreasurySet(address indexed treasury);

    /// @notice The tiers must start at 0, rise strictly and have non-zero prices.
    error TokenSaleInvalidTiers(uint256 index);
    /// @notice A purchase must be for more than zero tokens.
    error TokenSaleZeroAmount();
    /// @notice The purchase would cost `cost`, more than the buyer's limit `maxCost`.
    error TokenSaleCostAboveMax(uint256 cost, uint256 maxCost);
    /// @notice `buyer` holds or approved only `available` payment units of the `required`.
    error TokenSalePaymentShort(address buyer, uint256 required, uint256 available);
    /// @notice The treasury cannot be the zero address.
    error TokenSaleInvalidTreasury(address treasury);

    bytes32 public constant ISSUER_ROLE = keccak256("ISSUER_ROLE");
    uint256 private constant ONE_TOKEN = 1e18;

    ComputeToken public immutable token;
    IERC20 public immutable paymentToken;
    Settlement public immutable settlement;
    address public treasury;
    Tier[] private _tiers;

    constructor(
        ComputeToken token_,
        IERC20 paymentToken_,
        Settlement settlement_,
        address treasury_,
        address admin,
        Tier[] memory tiers_
    ) {
        token = token_;
        paymentToken = paymentToken_;
        settlement = settlement_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(ISSUER_ROLE, admin);
        _setTreasury(treasury_);
        _setTiers(tiers_);
    }

    /// @notice Buys `amount` base units, paying at most `maxCost` payment units from an allowance.
    /// @dev The buyer must be allowlisted on the token and have approved this contract.
    function buy(uint256 amount, uint256 maxCost) external returns (uint256 cost) {
        return _buy(amount, maxCost, false);
    }

    /// @notice Buys `amount` base units, approving the payment with an EIP-2612 permit first.
    /// @dev A permit that was already used (for example front-run) is ignored when the allowance
    /// it granted is in place, so the purchase cannot be griefed.
    function buyWithPermit(uint256 amount, uint256 maxCost, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        returns (uint256 cost)
    {
        _permit(maxCost, deadline, v, r, s);
        return _buy(amount, maxCost, false);
    }

    /// @notice Buys `amount` base units straight into the buyer's Settlement escrow, paying at
    /// most `maxCost` payment units from an allowance.
    /// @dev The buyer must be allowlisted on the token and have approved this contract.
    function buyToEscrow(uint256 amount, uint256 maxCost) external returns (uint256 cost) {
        return _buy(amount, maxCost, true);
    }

    /// @notice Buys `amount` base units straight into the buyer's escrow, approving the payment
    /// with an EIP-2612 permit first.
    /// @dev A permit already used is ignored when its allowance is in place, as in `buyWithPermit`.
    function buyToEscrowWithPermit(uint256 amount, uint256 maxCost, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        returns (uint256 cost)
    {
        _permit(maxCost, deadline, v, r, s);
        return _buy(amount, maxCost, true);
    }

    /// @notice Mints `amount` base units to `to` against the invoice or bundle reference `ref`.
    /// @dev Only ISSUER_ROLE; `to` must be allowlisted.
    function issue(address to, uint256 amount, bytes32 ref) external onlyRole(ISSUER_ROLE) {
        if (amount == 0) revert TokenSaleZeroAmount();
        token.mint(to, amount);
        emit Issued(to, amount, ref);
    }

    /// @notice Mints `amount` base units into `account`'s Settlement escrow against the reference `ref`.
    /// @dev Only ISSUER_ROLE; `account` must be allowlisted.
    function issueToEscrow(address account, uint256 amount, bytes32 ref) external onlyRole(ISSUER_ROLE) {
        if (amount == 0) revert TokenSaleZeroAmount();
        _mintToEscrow(account, amount);
        emit Issued(account, amount, ref);
    }

    /// @notice Replaces the volume tiers.
    /// @dev Tiers start at minAmount 0 and rise strictly; every price is non-zero.
    function setTiers(Tier[] calldata tiers_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTiers(tiers_);
    }

    /// @notice Sends future sale proceeds to `treasury_`.
    function setTreasury(address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTreasury(treasury_);
    }

    /// @notice The payment cost of buying `amount` base units, and the index of the tier applied.
    function quote(uint256 amount) public view returns (uint256 cost, uint256 tier) {
        tier = _tiers.length - 1;
        while (_tiers[tier].minAmount > amount) --tier;
        cost = Math.mulDiv(amount, _tiers[tier].price, ONE_TOKEN, Math.Rounding.Ceil);
    }

    /// @notice The volume tiers, lowest first.
    function tiers() external view returns (Tier[] memory) {
        return _tiers;
    }

    function _permit(uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s) private {
        try IERC20Permit(address(paymentToken)).permit(msg.sender, address(this), value, deadline, v, r, s) {}
        catch {}
    }

    function _mintToEscrow(address account, uint256 amount) private {
        token.mint(address(settlement), amount);
        settlement.creditMinted(account, amount);
    }

    function _buy(uint256 amount, uint256 maxCost, bool toEscrow) private returns (uint256 cost) {
        if (amount == 0) revert TokenSaleZeroAmount();
        uint256 tier;
        (cost, tier) = quote(amount);
        if (cost > maxCost) revert TokenSaleCostAboveMax(cost, maxCost);
        uint256 available = Math.min(paymentToken.balanceOf(msg.sender), paymentToken.allowance(msg.sender, address(this)));
        if (available < cost) revert TokenSalePaymentShort(msg.sender, cost, available);
        paymentToken.safeTransferFrom(msg.sender, treasury, cost);
        if (toEscrow) _mintToEscrow(msg.sender, amount);
        else token.mint(msg.sender, amount);
        emit Purchased(msg.sender, amount, cost, tier);
    }

    function _setTiers(Tier[] memory tiers_) private {
        if (tiers_.length == 0) revert TokenSaleInvalidTiers(0);
        delete _tiers;
        for (uint256 i = 0; i < tiers_.length; ++i) {
            bool rises = i == 0 ? tiers_[i].minAmount == 0 : tiers_[i].minAmount > tiers_[i - 1].minAmount;
            if (!rises || tiers_[i].price == 0) revert TokenSaleInvalidTiers(i);
            _tiers.push(tiers_[i]);
        }
        emit TiersSet(tiers_);
    }

    function _setTreasury(address treasury_) private {
        if (treasury_ == address(0)) revert TokenSaleInvalidTreasury(treasury_);
        treasury = treasury_;
        emit TreasurySet(treasury_);
    }
}
