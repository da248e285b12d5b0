// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title NodeRegistry
/// @notice The operator's inference nodes: each node's receipt key with its endpoint URL, tier
/// (`edge`, `regional` or `cloud`) and region. Only active nodes receive work, and auditors
/// check receipt keys against this registry.
/// @dev A retired key stays retired: it can never be registered again, so receipts signed by it
/// after its retirement can always be told apart.
contract NodeRegistry is AccessControl {
    /// @notice Where a node stands: never registered, serving, or retired for good.
    enum Status {
        Unknown,
        Active,
        Retired
    }

    /// @notice A node's record; blocks are where it was (last) registered and retired (0 if not).
    struct Node {
        Status status;
        uint64 registeredBlock;
        uint64 retiredBlock;
        string endpoint;
        string tier;
        string region;
    }

    /// @notice `node`'s receipt key was registered (or its record updated) as serving at `endpoint`.
    event NodeRegistered(address indexed node, string endpoint, string tier, string region);
    /// @notice `node`'s receipt key was retired; it receives no work and its receipts no longer count.
    event NodeRetired(address indexed node);

    /// @notice `node` is registered and active already.
    error NodeRegistryAlreadyRegistered(address node);
    /// @notice `node` was retired and can never be registered again.
    error NodeRegistryNodeRetired(address node);
    /// @notice `node` is not an active registered node.
    error NodeRegistryNotActive(address node);
    /// @notice The node key cannot be the zero address.
    error NodeRegistryInvalidNode(address node);
    /// @notice `tier` is not one of `edge`, `regional`, `cloud`.
    error NodeRegistryInvalidTier(string tier);
    /// @notice The endpoint URL must be non-empty (and at most 2048 bytes).
    error NodeRegistryInvalidEndpoint(string endpoint);

    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");
    uint256 private constant MAX_ENDPOINT_LENGTH = 2048;

    mapping(address node => Node) private _nodes;
    address[] private _keys;

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(REGISTRAR_ROLE, admin);
    }

    /// @notice Registers `node`'s receipt key as serving at `endpoint` in `tier` and `region`.
    /// @dev Only REGISTRAR_ROLE. A key is registered once; a retired key never again.
    function register(address node, string calldata endpoint, string calldata tier, string calldata region)
        external
        onlyRole(REGISTRAR_ROLE)
    {
        if (node == address(0)) revert NodeRegistryInvalidNode(node);
        Node storage record = _nodes[node];
        if (record.status == Status.Active) revert NodeRegistryAlreadyRegistered(node);
        if (record.status == Status.Retired) revert NodeRegistryNodeRetired(node);
        _keys.push(node);
        record.status = Status.Active;
        _write(node, record, endpoint, tier, region);
    }

    /// @notice Changes an active node's endpoint, tier and region.
    /// @dev Only REGISTRAR_ROLE; emits NodeRegistered with the new record.
    function update(address node, string calldata endpoint, string calldata tier, string calldata region)
        external
        onlyRole(REGISTRAR_ROLE)
    {
        Node storage record = _nodes[node];
        if (record.status != Status.Active) revert NodeRegistryNotActive(node);
        _write(node, record, endpoint, tier, region);
    }

    /// @notice Retires `node` for good: it gets no more work and cannot be registered again.
    /// @dev Only REGISTRAR_ROLE.
    function retire(address node) external onlyRole(REGISTRAR_ROLE) {
        Node storage record = _nodes[node];
        if (record.status != Status.Active) revert NodeRegistryNotActive(node);
        record.status = Status.Retired;
        record.retiredBlock = uint64(block.number);
        emit NodeRetired(node);
    }

    /// @notice Whether `node` is registered and not retired.
    function isActive(address node) external view returns (bool) {
        return _nodes[node].status == Status.Active;
    }

    /// @notice `node`'s record (status Unknown and empty fields when it was never registered).
    function nodeOf(address node) external view returns (Node memory) {
        return _nodes[node];
    }

    /// @notice Every key ever registered, in registration order (retired ones included).
    function nodes() external view returns (address[] memory) {
        return _keys;
    }

    function _write(
        address node,
        Node storage record,
        string calldata endpoint,
        string calldata tier,
        string calldata region
    ) private {
        uint256 length = bytes(endpoint).length;
        if (length == 0 || length > MAX_ENDPOINT_LENGTH) revert NodeRegistryInvalidEndpoint(endpoint);
        bytes32 t = keccak256(bytes(tier));
        if (t != keccak256("edge") && t != keccak256("regional") && t != keccak256("cloud")) {
            revert NodeRegistryInvalidTier(tier);
        }
        record.registeredBlock = uint64(block.number);
        record.endpoint = endpoint;
        record.tier = tier;
        record.region = region;
        emit NodeRegistered(node, endpoint, tier, region);
    }
}
