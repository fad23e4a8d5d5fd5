"""Information flow toward a target token: causal path counts, attention rollout, the
Theorem 5.1 bound, Jacobian sensitivity and the profile that puts them side by side
(docs/science.md §3, §5)."""

from .paths import path_counts as path_counts
from .profile import OversquashProfile as OversquashProfile
from .profile import oversquash_profile as oversquash_profile
from .rollout import attention_rollout as attention_rollout
from .rollout import attention_rollout_from_model as attention_rollout_from_model
from .rollout import oversquashing_bound as oversquashing_bound
from .sensitivity import Sensitivity as Sensitivity
from .sensitivity import token_sensitivity as token_sensitivity

__all__ = [
    "path_counts",
    "attention_rollout",
    "attention_rollout_from_model",
    "oversquashing_bound",
    "Sensitivity",
    "token_sensitivity",
    "OversquashProfile",
    "oversquash_profile",
]
