// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice The Foundry cheatcodes these tests use (forge-std's Vm, reduced to what is needed).
/// @dev forge answers calls to this interface at the cheatcode address below.
interface Vm {
    function prank(address sender) external;
    function startPrank(address sender) external;
    function stopPrank() external;
    function warp(uint256 timestamp) external;
    function roll(uint256 blockNumber) external;
    function assume(bool condition) external;
    function expectRevert() external;
    function expectRevert(bytes4 selector) external;
    function expectRevert(bytes calldata revertData) external;
    function expectEmit(bool checkTopic1, bool checkTopic2, bool checkTopic3, bool checkData) external;
    function addr(uint256 privateKey) external pure returns (address);
    function sign(uint256 privateKey, bytes32 digest) external pure returns (uint8 v, bytes32 r, bytes32 s);
    function label(address account, string calldata newLabel) external;
}

/// @notice A minimal test base for forge without forge-std: cheatcodes, assertions, bounded inputs
/// and the invariant-target hooks forge reads.
abstract contract SluiceTest {
    /// @notice A fuzz selector as forge reads it from `targetSelectors()`.
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    /// @notice The check `what` failed: expected `want`, got `got`.
    error AssertionFailed(string what, uint256 want, uint256 got);
    /// @notice The check `what` failed.
    error AssertionFalse(string what);

    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    address[] private _targetContracts;
    FuzzSelector[] private _targetSelectors;

    /// @notice The contracts forge calls at random in invariant runs.
    function targetContracts() public view returns (address[] memory) {
        return _targetContracts;
    }

    /// @notice The functions forge calls at random in invariant runs (all of a target's when empty).
    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetSelectors;
    }

    function targetContract(address target) internal {
        _targetContracts.push(target);
    }

    function targetSelector(address target, bytes4[] memory selectors) internal {
        _targetSelectors.push(FuzzSelector(target, selectors));
    }

    function assertEq(uint256 got, uint256 want, string memory what) internal pure {
        if (got != want) revert AssertionFailed(what, want, got);
    }

    function assertEq(address got, address want, string memory what) internal pure {
        if (got != want) revert AssertionFailed(what, uint160(want), uint160(got));
    }

    function assertEq(bytes32 got, bytes32 want, string memory what) internal pure {
        if (got != want) revert AssertionFailed(what, uint256(want), uint256(got));
    }

    function assertLe(uint256 got, uint256 most, string memory what) internal pure {
        if (got > most) revert AssertionFailed(what, most, got);
    }

    function assertTrue(bool condition, string memory what) internal pure {
        if (!condition) revert AssertionFalse(what);
    }

    /// @notice `x` mapped into [min, max] (uniform enough for fuzzing, never reverting).
    function bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        if (max <= min) return min;
        uint256 size = max - min + 1;
        // Cannot overflow: size >= 1 and x % size < size.
        unchecked {
            return min + (x % size);
        }
    }
}
