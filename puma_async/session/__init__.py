"""Sessions: settings, the model resolver, control messages and their state machine, the
roles' programs and their factory, recording, and the in-process runner.

Modules: :mod:`.settings` (public settings, configuration digest), :mod:`.frames` (frame
limit, input blocks), :mod:`.models` (presets, architecture tables, the owner's weights, the
client's tokenizer), :mod:`.messages` and :mod:`.state` (the control conversation),
:mod:`.generation` (the client's decoding), :mod:`.programs` and :mod:`.factory` (one role's
program), :mod:`.recording` (traces), :mod:`.inprocess` (all roles in one process),
:mod:`.network` (this process's roles over TCP), :mod:`.report` (the client's results as
text or JSON), :mod:`.accounting` (a pass's cost per component, for the benchmarks).
"""

from puma_async.session.generation import (
    GenerationOptions,
    Progress,
    ProgressFn,
    PromptResult,
    TokenRecord,
    check_prompts,
    one_hot,
    pick_token,
)
from puma_async.session.inprocess import SessionResult, in_process_settings, run_session
from puma_async.session.settings import SessionSettings

__all__ = [
    "GenerationOptions", "Progress", "ProgressFn", "PromptResult", "SessionResult",
    "SessionSettings", "TokenRecord", "check_prompts", "in_process_settings", "one_hot",
    "pick_token", "run_session",
]
