"""Task prompts (counting, copying, repeated-token pairs) and task accuracy under the
paper's remedies (docs/science.md §6). ``oversquash_lens.tasks.<builder>`` is the user API."""

from .accuracy import AccuracyReport as AccuracyReport
from .accuracy import read_answer as read_answer
from .accuracy import task_accuracy as task_accuracy
from .prompts import RANDOM_TASKS as RANDOM_TASKS
from .prompts import REMEDIES as REMEDIES
from .prompts import Pair as Pair
from .prompts import Prompt as Prompt
from .prompts import alternating_pair as alternating_pair
from .prompts import applicable_remedies as applicable_remedies
from .prompts import copy_pair as copy_pair
from .prompts import copying_prompt as copying_prompt
from .prompts import counting_prompt as counting_prompt
from .prompts import pair_tasks as pair_tasks
from .prompts import prompt_tasks as prompt_tasks
from .prompts import repeated_pair as repeated_pair
from .prompts import task_pair as task_pair
from .prompts import task_prompt as task_prompt

__all__ = [
    "Pair",
    "Prompt",
    "REMEDIES",
    "RANDOM_TASKS",
    "repeated_pair",
    "alternating_pair",
    "copy_pair",
    "counting_prompt",
    "copying_prompt",
    "task_pair",
    "task_prompt",
    "pair_tasks",
    "prompt_tasks",
    "applicable_remedies",
    "AccuracyReport",
    "task_accuracy",
    "read_answer",
]
