// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {NodeRegistry} from "../NodeRegistry.sol";
import {SluiceTest} from "./SluiceTest.sol";

contract NodeRegistryFuzzTest is SluiceTest {
    NodeRegistry internal registry;

    function setUp() public {
        registry = new NodeRegistry(address(this));
    }

    function testFuzz_onlyRegistrarRegisters(address caller, address node) public {
        vm.assume(caller != address(this) && node != address(0));
        bytes32 role = registry.REGISTRAR_ROLE(); // read before the prank, which covers only the next call
        vm.prank(caller);
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, caller, role));
        registry.register(node, "http://n", "edge", "r");
        assertTrue(!registry.isActive(node), "not registered");
    }

    function testFuzz_aRetiredKeyNeverReturns(address node, uint8 tier) public {
        vm.assume(node != address(0));
        string[3] memory tiers = ["edge", "regional", "cloud"];
        registry.register(node, "http://n", tiers[tier % 3], "r");
        assertTrue(registry.isActive(node), "active");
        registry.retire(node);
        assertTrue(!registry.isActive(node), "retired");
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NodeRegistryNodeRetired.selector, node));
        registry.register(node, "http://n", "edge", "r");
    }

    function testFuzz_onlyTheThreeTiers(string calldata tier) public {
        bytes32 t = keccak256(bytes(tier));
        vm.assume(t != keccak256("edge") && t != keccak256("regional") && t != keccak256("cloud"));
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NodeRegistryInvalidTier.selector, tier));
        registry.register(address(0x40DE), "http://n", tier, "r");
    }
}

/// @notice Random registrations and retirements by the registrar and by strangers.
contract RegistryHandler is SluiceTest {
    NodeRegistry internal immutable registry;
    address internal immutable registrar;
    address[] public keys;
    mapping(address => bool) public retired;
    /// @notice Changes that went through for a caller without REGISTRAR_ROLE.
    uint256 public strangerChanges;

    constructor(NodeRegistry registry_, address registrar_) {
        registry = registry_;
        registrar = registrar_;
        for (uint160 i = 1; i <= 4; ++i) keys.push(address(0x7000 + i));
    }

    function keyCount() external view returns (uint256) {
        return keys.length;
    }

    function register(uint256 which, bool asRegistrar, address stranger) external {
        address node = keys[which % keys.length];
        address caller = asRegistrar ? registrar : stranger;
        vm.prank(caller);
        try registry.register(node, "http://n", "regional", "r") {
            if (caller != registrar) ++strangerChanges;
        } catch {}
    }

    function retire(uint256 which, bool asRegistrar, address stranger) external {
        address node = keys[which % keys.length];
        address caller = asRegistrar ? registrar : stranger;
        vm.prank(caller);
        try registry.retire(node) {
            if (caller != registrar) ++strangerChanges;
            retired[node] = true;
        } catch {}
    }
}

contract NodeRegistryInvariantTest is SluiceTest {
    NodeRegistry internal registry;
    RegistryHandler internal handler;
    address internal constant REGISTRAR = address(0x0BE7A70);

    function setUp() public {
        registry = new NodeRegistry(REGISTRAR);
        handler = new RegistryHandler(registry, REGISTRAR);
        targetContract(address(handler));
    }

    function invariant_retiredKeysStayRetired() public view {
        for (uint256 i = 0; i < handler.keyCount(); ++i) {
            address node = handler.keys(i);
            if (handler.retired(node)) assertTrue(!registry.isActive(node), "a retired key is active again");
        }
    }

    function invariant_onlyTheRegistrarChangesTheRegistry() public view {
        assertEq(handler.strangerChanges(), 0, "a caller without REGISTRAR_ROLE changed the registry");
    }
}
