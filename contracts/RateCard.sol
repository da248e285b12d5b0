// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

/// @title RateCard
/// @notice The published price of every model served on Sluice, in compute-token base units
/// per 1,000,000 model tokens.
/// @dev cost = ceil((promptTokens * inputRate + completionTokens * outputRate) / 1e6).
contract RateCard is AccessControl {
    /// @notice Where a model is served: edge site, regional data centre or central cloud.
    enum Tier {
        Edge,
        Regional,
        Cloud
    }

    struct Rate {
        uint256 inputRate;
        uint256 outputRate;
        Tier tier;
        bool listed;
    }

    /// @notice The price of `model` (keccak256 of its name) was set.
    event RateSet(bytes32 indexed model, uint256 inputRate, uint256 outputRate);
    /// @notice `model` was listed under `name` in `tier`.
    event ModelListed(bytes32 indexed model, string name, Tier tier);
    /// @notice `model` was withdrawn from sale.
    event ModelDelisted(bytes32 indexed model);

    /// @notice `model` has no published rate.
    error RateCardUnknownModel(bytes32 model);
    /// @notice A model name must be between 1 and 128 bytes long.
    error RateCardInvalidName(uint256 length);

    bytes32 public constant RATE_SETTER_ROLE = keccak256("RATE_SETTER_ROLE");
    uint256 public constant MODEL_TOKENS_PER_RATE = 1_000_000;

    mapping(bytes32 model => Rate) private _rates;
    mapping(bytes32 model => string) public nameOf;
    bytes32[] private _models;

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(RATE_SETTER_ROLE, admin);
    }

    /// @notice Publishes the rates and tier of the model called `name`.
    /// @dev The model id is keccak256(bytes(name)); prices take effect for calls metered after this block.
    function setRate(string calldata name, uint256 inputRate, uint256 outputRate, Tier tier)
        external
        onlyRole(RATE_SETTER_ROLE)
    {
        uint256 length = bytes(name).length;
        if (length == 0 || length > 128) revert RateCardInvalidName(length);
        bytes32 model = keccak256(bytes(name));
        Rate storage rate = _rates[model];
        if (!rate.listed || rate.tier != tier) {
            if (bytes(nameOf[model]).length == 0) {
                nameOf[model] = name;
                _models.push(model);
            }
            rate.listed = true;
            rate.tier = tier;
            emit ModelListed(model, name, tier);
        }
        rate.inputRate = inputRate;
        rate.outputRate = outputRate;
        emit RateSet(model, inputRate, outputRate);
    }

    /// @notice Withdraws `model` from sale; calls to it are refused until it is listed again.
    function delist(bytes32 model) external onlyRole(RATE_SETTER_ROLE) {
        if (!_rates[model].listed) revert RateCardUnknownModel(model);
        _rates[model].listed = false;
        emit ModelDelisted(model);
    }

    /// @notice The rate of `model`.
    /// @dev Reverts with RateCardUnknownModel for a model that is not listed.
    function rateOf(bytes32 model) external view returns (Rate memory) {
        Rate memory rate = _rates[model];
        if (!rate.listed) revert RateCardUnknownModel(model);
        return rate;
    }

    /// @notice The cost in base units of a call to `model` with the given model-token counts.
    /// @dev Rounds up, so a call never costs less than its exact price.
    function quote(bytes32 model, uint256 promptTokens, uint256 completionTokens) external view returns (uint256) {
        Rate storage rate = _rates[model];
        if (!rate.listed) revert RateCardUnknownModel(model);
        return Math.ceilDiv(promptTokens * rate.inputRate + completionTokens * rate.outputRate, MODEL_TOKENS_PER_RATE);
    }

    /// @notice Every model id ever listed, listed or not now.
    function models() external view returns (bytes32[] memory) {
        return _models;
    }
}
