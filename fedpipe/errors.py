"""The one error type of a round: a stable code, the step, a log detail and a researcher-safe text.

| code                 | meaning                                                  | retryable | emitted by                          |
|----------------------|----------------------------------------------------------|-----------|-------------------------------------|
| bad_request          | the train request is malformed or names a bad field      | no        | parse_request                       |
| bad_training_args    | training_args break the schema                           | no        | parse_training_args                 |
| secagg_config        | secure-aggregation settings inconsistent or refused      | no        | check_secagg, encrypt_update        |
| dataset_not_found    | the dataset id is unknown on this node                   | no        | find_dataset                        |
| download_failed      | a file could not be fetched from the exchange            | yes       | fetch_* steps                       |
| bad_payload          | a downloaded file is not a valid payload                 | no        | fetch_* steps, set_params           |
| plan_not_approved    | the node owner has not approved this training plan       | no        | check_approval                      |
| plan_load_failed     | the plan source could not be imported or instantiated    | no        | load_plan                           |
| plan_init_failed     | the plan's post_init raised                              | no        | init_plan                           |
| state_load_failed    | the previous node state could not be read                | yes       | load_state                          |
| params_load_failed   | the global parameters do not fit the plan's model        | no        | set_params                          |
| aux_var_failed       | auxiliary variables could not be ingested or collected   | no        | ingest_aux_vars, collect_aux_vars   |
| data_failed          | the local data could not be loaded or split              | no        | split_data                          |
| no_training_data     | the training subset is empty                             | no        | split_data, train_model             |
| training_failed      | the plan's training routine raised                       | no        | train_model                         |
| encryption_failed    | the update could not be encrypted                        | no        | encrypt_update                      |
| state_save_failed    | the new node state could not be saved                    | yes       | save_state                          |
| upload_failed        | the results could not be uploaded                        | yes       | upload_results                      |
| internal             | a bug: an exception escaped a step                       | no        | run_round only                      |
| round_timeout        | the round ran past the owner's wall-time limit           | no        | run_round, train_model, validate_*  |

Wire strings are stable: append new codes, never rename one.
"""

import enum
import re

from attrs import evolve, field, frozen

__all__ = ["ErrorCode", "RoundError", "is_printable", "is_public_safe", "printable", "public_text"]


class ErrorCode(enum.StrEnum):
    """Stable machine-readable failure classes of a round."""

    BAD_REQUEST = "bad_request"
    BAD_TRAINING_ARGS = "bad_training_args"
    SECAGG_CONFIG = "secagg_config"
    DATASET_NOT_FOUND = "dataset_not_found"
    DOWNLOAD_FAILED = "download_failed"
    BAD_PAYLOAD = "bad_payload"
    PLAN_NOT_APPROVED = "plan_not_approved"
    PLAN_LOAD_FAILED = "plan_load_failed"
    PLAN_INIT_FAILED = "plan_init_failed"
    STATE_LOAD_FAILED = "state_load_failed"
    PARAMS_LOAD_FAILED = "params_load_failed"
    AUX_VAR_FAILED = "aux_var_failed"
    DATA_FAILED = "data_failed"
    NO_TRAINING_DATA = "no_training_data"
    TRAINING_FAILED = "training_failed"
    ENCRYPTION_FAILED = "encryption_failed"
    STATE_SAVE_FAILED = "state_save_failed"
    UPLOAD_FAILED = "upload_failed"
    INTERNAL = "internal"
    ROUND_TIMEOUT = "round_timeout"


_DEFAULT_PUBLIC: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "The train request is malformed.",
    ErrorCode.BAD_TRAINING_ARGS: "The training arguments are invalid.",
    ErrorCode.SECAGG_CONFIG: "Secure aggregation could not be configured on the node.",
    ErrorCode.DATASET_NOT_FOUND: "The requested dataset is not available on this node.",
    ErrorCode.DOWNLOAD_FAILED: "A file could not be downloaded from the file exchange.",
    ErrorCode.BAD_PAYLOAD: "A downloaded file is not a valid payload.",
    ErrorCode.PLAN_NOT_APPROVED: "The training plan is not approved by the node.",
    ErrorCode.PLAN_LOAD_FAILED: "The training plan could not be loaded.",
    ErrorCode.PLAN_INIT_FAILED: "The training plan could not be initialized with the given arguments.",
    ErrorCode.STATE_LOAD_FAILED: "The previous node state could not be read.",
    ErrorCode.PARAMS_LOAD_FAILED: "The model parameters could not be loaded into the training plan.",
    ErrorCode.AUX_VAR_FAILED: "The optimizer auxiliary variables could not be processed.",
    ErrorCode.DATA_FAILED: "The local data could not be prepared for training.",
    ErrorCode.NO_TRAINING_DATA: "No samples are left for training after the train/test split.",
    ErrorCode.TRAINING_FAILED: "Training failed on the node.",
    ErrorCode.ENCRYPTION_FAILED: "The model update could not be encrypted.",
    ErrorCode.STATE_SAVE_FAILED: "The new node state could not be saved.",
    ErrorCode.UPLOAD_FAILED: "The results could not be uploaded.",
    ErrorCode.INTERNAL: "Internal error on the node; the node owner can find details in the node log.",
    ErrorCode.ROUND_TIMEOUT: "The round ran past the node's time limit and was stopped.",
}

# What a public text may not contain: paths, tracebacks, exception reprs, code locations.
_LEAK_PATTERNS = (
    re.compile(r"(?:^|[\s'\"(=:])(?:/|~/|[A-Za-z]:\\)[\w.\-]+[/\\]"),  # absolute or home paths
    re.compile(r"\\[\w.\-]+\\"),  # windows-style relative path pieces
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r'File "[^"]*", line \d+'),
    re.compile(r"\b[A-Z]\w*(?:Error|Exception|Warning)\("),  # exception repr
    re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>"),
    re.compile(r"\.py\b"),
)


# What may not reach a log line or a reply as is: C0 controls, DEL, C1 controls (NEL included), the
# Unicode line and paragraph separators, the bidirectional overrides and isolates (they reorder
# what a reader sees), and lone surrogates (they cannot be encoded to UTF-8, JSON or msgpack).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def is_printable(text: str) -> bool:
    r"""Tell whether ``text`` holds only characters that ``printable`` would leave as they are.

    >>> is_printable("job-1"), is_printable("job\n1"), is_printable("\ud800")
    (True, False, False)
    """
    return _UNPRINTABLE.search(text) is None


def printable(text: str, limit: int | None = 64) -> str:
    r"""Return ``text`` safe to echo on one line of a log or a reply: escaped, then cut at ``limit``.

    Control characters (C0, DEL, C1), U+2028/U+2029, bidirectional controls and lone surrogates
    become backslash escapes (``\n``, ``\x1b``, ``\u2028``, ``\ud800``), so the result is always
    UTF-8 encodable and never breaks a line. A text longer than ``limit`` characters (None: no
    limit) keeps its first ``limit`` characters, escaped, followed by ``...``. Backslashes are
    kept as they are, so escaping is idempotent (``printable(printable(t, None), None)`` equals
    ``printable(t, None)``), at the price of not being reversible.

    >>> printable("bad\nname\x1b[31m")
    'bad\\nname\\x1b[31m'
    >>> printable("\ud800 \u2028 \x85"), printable("x" * 70, limit=4)
    ('\\ud800 \\u2028 \\x85', 'xxxx...')
    """
    cut = limit is not None and len(text) > limit
    head = text[:limit] if cut else text
    escaped = head if head.isascii() and head.isprintable() else _UNPRINTABLE.sub(_escape, head)
    return escaped + "..." if cut else escaped


def is_public_safe(text: str) -> bool:
    """Tell whether ``text`` is free of paths, tracebacks and exception reprs.

    >>> is_public_safe("Training failed on the node.")
    True
    >>> is_public_safe("cannot open /var/lib/node/db.sqlite")
    False
    >>> is_public_safe("ValueError('boom')")
    False
    """
    return not any(p.search(text) for p in _LEAK_PATTERNS)


def public_text(code: ErrorCode, public: str | None) -> str:
    """Return ``public`` when it is safe to show the researcher, else the code's default text.

    >>> public_text(ErrorCode.UPLOAD_FAILED, "see /tmp/x/y")
    'The results could not be uploaded.'
    """
    if public and is_public_safe(public):
        return public
    return _DEFAULT_PUBLIC[code]


@frozen(kw_only=True, auto_exc=False)  # compared by value, not by identity
class RoundError(Exception):
    r"""A round failure: ``detail`` goes to the node log only, ``public`` to the researcher.

    A value (compared by its fields) that is also an exception, so that ``.unwrap()`` of a failed
    ``Result`` says why: ``returns`` raises its ``UnwrapFailedError`` *from* the failure, and the
    traceback shows this error's :meth:`log_line`.

    ``public`` is checked on construction: a text that could leak a path, a traceback or an
    exception repr is replaced by the code's generic text, so no caller can leak by mistake.
    ``step``, ``detail`` and ``public`` are escaped with ``printable`` (no limit) on construction,
    so they are always UTF-8 encodable and single-line: no caller can forge a log line.

    >>> e = RoundError(code=ErrorCode.DOWNLOAD_FAILED, step="fetch_params",
    ...                detail="GET http://x/p: 503", public="Cannot download /etc/passwd")
    >>> e.public
    'A file could not be downloaded from the file exchange.'
    >>> RoundError(code=ErrorCode.BAD_REQUEST, step="parse_request", detail="x\n[ok] forged").log_line()
    '[bad_request] step=parse_request: x\\n[ok] forged'
    """

    code: ErrorCode
    step: str
    detail: str = ""
    public: str = field(default="")
    retryable: bool = False
    cause: BaseException | None = field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # The leak check runs before escaping too: escaping can hide what precedes a path.
        public = public_text(self.code, printable(public_text(self.code, self.public), None))
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "detail", printable(self.detail, None))
        object.__setattr__(self, "step", printable(self.step, None))

    def __str__(self) -> str:
        return self.log_line()

    def with_step(self, step: str) -> "RoundError":
        """Return this error attributed to ``step`` (used by NamedStep when a step left it empty)."""
        return evolve(self, step=step)

    def log_line(self) -> str:
        """One line for the node log: code, step and the full detail (escaped on construction)."""
        return f"[{self.code}] step={self.step or '?'}: {self.detail or self.public}"
