"""The one place that knows TransformerLens: hook names (:mod:`.names`), version probes and
model facts (:mod:`.facts`), token preparation (:mod:`.tokens`), cache parsing (:mod:`.cache`),
forward runs (:mod:`.run`) and state guards (:mod:`.state`).

Every other module imports ``from .. import _tl`` and calls ``_tl.<name>``; nothing outside
this package names a hook or probes a TransformerLens version (docs/architecture.md).

Supported model objects (duck-typed on the HookedRootModule API):
``transformer_lens.TransformerBridge`` (TL 3.9+/4.x) and the legacy ``HookedTransformer``
(TL 2.x/3.x).
"""

from .cache import cache_pattern_batch as cache_pattern_batch
from .cache import cache_patterns as cache_patterns
from .cache import is_activation_cache as is_activation_cache
from .cache import patterns_from_cache as patterns_from_cache
from .checkpoint import checkpointed_blocks as checkpointed_blocks
from .facts import ModelInfo as ModelInfo
from .facts import attention_windows as attention_windows
from .facts import b_o as b_o
from .facts import b_v as b_v
from .facts import bridge_class as bridge_class
from .facts import centres_before_norm as centres_before_norm
from .facts import find_module as find_module
from .facts import has_post_attn_norm as has_post_attn_norm
from .facts import is_offloaded as is_offloaded
from .facts import ln1_scale as ln1_scale
from .facts import model_device as model_device
from .facts import model_dtype as model_dtype
from .facts import model_info as model_info
from .facts import norm_eps as norm_eps
from .facts import norm_params as norm_params
from .facts import prepends_bos as prepends_bos
from .facts import readable_weights as readable_weights
from .facts import require_attention as require_attention
from .facts import text_tokenizer as text_tokenizer
from .facts import tl_major_version as tl_major_version
from .facts import unembed as unembed
from .facts import w_k as w_k
from .facts import w_o as w_o
from .facts import w_q as w_q
from .facts import w_v as w_v
from .names import FINAL_NORM as FINAL_NORM
from .names import attn_out_name as attn_out_name
from .names import ln1_path as ln1_path
from .names import ln1_post_path as ln1_post_path
from .names import mlp_out_name as mlp_out_name
from .names import norm_scale_name as norm_scale_name
from .names import pattern_name as pattern_name
from .names import post_attn_norm_names as post_attn_norm_names
from .names import resid_mid_name as resid_mid_name
from .names import resid_name as resid_name
from .names import resid_pre_name as resid_pre_name
from .names import v_name as v_name
from .names import z_name as z_name
from .protocol import HookedModel as HookedModel
from .run import Hook as Hook
from .run import attention_patterns as attention_patterns
from .run import capture as capture
from .run import check_pattern_edits_reach_output as check_pattern_edits_reach_output
from .run import resumes_exactly as resumes_exactly
from .run import run_from_layer as run_from_layer
from .run import run_with_hooks as run_with_hooks
from .state import cast_temporarily as cast_temporarily
from .state import count_hooks as count_hooks
from .state import preserved as preserved
from .state import release_graphs as release_graphs
from .tokens import prepare_tokens as prepare_tokens
from .tokens import single_sequence as single_sequence
