"""The two seed formulas of espl-gym, in one place.

- `derive_seed(*parts)`: a 31-bit seed named by its purpose, e.g. derive_seed(run_seed, "episode", step, m, b, n).
  Every random draw of a training step comes from seeds derived this way, so a resumed run draws exactly what
  an uninterrupted one would; the leaderboard derives its per-episode sampling seeds the same way.
- `mix_seed(seed, k)`: stream k of a seed (rows of a batch, rounds of a rollout); cheap and stateless.
"""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """sha256 of the parts joined by "/", first 4 bytes little-endian, top bit cleared."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def mix_seed(seed: int, k: int) -> int:
    """A reproducible seed for stream k of `seed` (rows of a batch, turns of an episode)."""
    return (int(seed) * 1_000_003 + int(k) + 1) % (2**63 - 1)
