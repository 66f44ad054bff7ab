"""espl-gym: train LLM agents with RL and Evolutionary System Prompt Learning in multi-turn Gymnasium envs.

`import espl` registers every env (`espl/...` and third-party ones from the `espl.envs` entry-point group)
with Gymnasium, and imports no torch or transformers: heavy libraries load inside the backends that use them.
"""

__version__ = "0.1.0"

from espl.types import Completion, Message, SamplingParams, Trajectory
from espl.envs import MultiTurnEnv, Outcome, Task, register_envs

register_envs()

__all__ = [
    "Completion", "Message", "MultiTurnEnv", "Outcome", "SamplingParams", "Task", "Trajectory",
    "__version__", "register_envs",
]
