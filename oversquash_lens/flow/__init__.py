"""Information flow toward a target token: causal path counts, attention rollout, the
Theorem 5.1 bound, Jacobian sensitivity, the profile that puts them side by side, and the
contribution routes and attention flow (docs/science.md §3, §5, §"Contribution routes and
attention flow")."""

from .attention_flow import attention_flow as attention_flow
from .paths import path_counts as path_counts
from .profile import OversquashProfile as OversquashProfile
from .profile import oversquash_profile as oversquash_profile
from .rollout import attention_rollout as attention_rollout
from .rollout import attention_rollout_from_model as attention_rollout_from_model
from .rollout import oversquashing_bound as oversquashing_bound
from .routes import FlowRoutes as FlowRoutes
from .routes import information_flow as information_flow
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
    "FlowRoutes",
    "information_flow",
    "attention_flow",
]
