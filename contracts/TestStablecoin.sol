// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title TestStablecoin
/// @notice A plain 6-decimal stablecoin with EIP-2612 permit, deployed only on the embedded
/// development chain to pay for compute tokens.
contract TestStablecoin is ERC20, ERC20Permit, Ownable {
    constructor(address owner_) ERC20("Sluice Test Dollar", "tUSD") ERC20Permit("Sluice Test Dollar") Ownable(owner_) {}

    /// @notice Mints `amount` units to `to`.
    /// @dev Only the owner (the embedded deployment's operator) funds test wallets.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @notice Six decimals, like the dollar stablecoins it stands in for.
    function decimals() public pure override returns (uint8) {
        return 6;
    }
}
