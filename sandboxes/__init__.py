"""Isolated code execution: Docker backend, warm pool, image build (docs/sandbox.md).

Importing this package does not import the docker SDK; the backends import it when they connect.
"""

from espl.sandboxes.core import (
    ExecutionResult, Sandbox, SandboxConfig, SandboxError, SandboxUnavailable,
)
from espl.sandboxes.docker_sandbox import DockerSandbox
from espl.sandboxes.pool import SandboxPool

__all__ = [
    "DockerSandbox", "ExecutionResult", "Sandbox", "SandboxConfig", "SandboxError", "SandboxPool",
    "SandboxUnavailable",
]
