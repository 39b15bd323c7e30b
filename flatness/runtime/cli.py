"""Entry points' error handling: a user error is one line on stderr and exit code 2.

`run(main)` is absl's ``app.run`` with two changes:

* An error that is the user's to fix prints ``error: <what, where, what to do>``
  and exits with `USER_ERROR_EXIT_CODE`, without a traceback: a bad command
  line (a mistyped ``--config.<field>``, a missing config file, an unknown
  variant), and what a run raises as ``ValueError`` (config values, grammar
  files, incompatible checkpoints), ``OSError`` (a missing file, a full or
  read-only disk) or one of the project's own error types (a checkpoint that
  cannot be saved or read, a non-finite loss). ``--debug`` (or the environment
  variable ``FLATNESS_DEBUG=1``) shows the traceback instead.
* After that line the process ends at once (``os._exit``): the background
  threads of the checkpoint and TensorBoard writers would otherwise print
  their own shutdown errors, hundreds of lines after the one that matters.
  Before it, a failing background thread prints one ``warning:`` line rather
  than its traceback, each distinct one once (`flatness.runtime.logs` shortens the
  libraries' logged errors).

Other exceptions (bugs) keep their traceback.
"""
import errno
import os
import sys
import threading

from absl import app
from absl import flags

from flatness.runtime import compile_cache

USER_ERROR_EXIT_CODE = 2
DEBUG_ENV = "FLATNESS_DEBUG"
_PACKAGES = ("flatness", "data_gen", "experiments", "launch")

flags.DEFINE_bool("debug", False, "Show the traceback of a user error instead of one line.")


def _debug(argv=None) -> bool:
  argv = sys.argv if argv is None else argv
  if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
    return True
  try:
    return bool(flags.FLAGS.debug)
  except flags.UnparsedFlagAccessError:
    return "--debug" in argv


def is_user_error(e: BaseException) -> bool:
  """ValueError, OSError, or an exception class of this project's own packages."""
  return (isinstance(e, (ValueError, OSError))
          or type(e).__module__.split(".")[0] in _PACKAGES)


def _latest_checkpoint(workdir: str) -> str:
  ckpts = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []
  return (f"the last checkpoint is step {steps[-1]} in {ckpts}" if steps
          else f"{workdir} has no checkpoint yet")


def _workdir() -> str | None:
  try:
    value = flags.FLAGS["workdir"].value
  except (KeyError, flags.UnparsedFlagAccessError):
    return None
  return value if isinstance(value, str) else None


def describe(e: BaseException) -> str:
  """The one line printed for a user error."""
  if isinstance(e, OSError) and e.strerror and not _is_config_load(e):
    workdir = _workdir()
    where = e.filename or workdir
    what = f"{where}: {e.strerror}" if where else e.strerror
    if e.errno == errno.ENOSPC:
      tail = "free some space and rerun the same command: it resumes"
      return f"{what}; {tail}" + (f" ({_latest_checkpoint(workdir)})" if workdir else "")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
      return f"{what}; choose a --workdir this user can write to"
    if e.errno == errno.ENOENT:
      return f"{what}; check the path"
    return what
  text = str(e).strip()
  if _is_config_load(e):
    # ml_collections' message: "... Failed loading config file config_config\n  Attempted
    # [Relative path]:\n    PATH\n      [Errno 2] No such file or directory: 'PATH'"
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return f"--config: {lines[-1]}; give the path of a config file (from the repository root)"
  lines = text.splitlines()
  first = lines[0] if lines else type(e).__name__
  if type(e).__name__ in ("KeyError", "AttributeError"):
    first = f"{type(e).__name__}: {first}"
  # Messages that continue over lines (a list of mismatched fields) keep them, indented.
  return "\n  ".join([first] + [l.strip() for l in lines[1:] if l.strip()][:8])


def _is_config_load(e: BaseException) -> bool:
  return "Failed loading config file" in str(e)


def fail(message: str) -> None:
  """Prints ``error: message`` and ends the process with the user-error exit code."""
  sys.stdout.flush()
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  os._exit(USER_ERROR_EXIT_CODE)   # pylint: disable=protected-access


def _flag_message(e: BaseException, argv) -> str:
  """A command-line error in one line, naming the flag."""
  text = str(e).strip()
  if isinstance(e, flags.Error):
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    flag = lines[0].rstrip(":") if lines and lines[0].startswith("flag ") else ""
    # absl quotes the config file's own traceback: its last line is the reason.
    reason = lines[-1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
    return f"{flag}: {reason}" if flag and flag != reason else reason
  if isinstance(e, (AttributeError, KeyError)):
    # ml_collections: an override naming a field the config does not have.
    field = text.strip("\"'")
    culprit = next((a.split("=")[0] for a in argv[1:]
                    if a.startswith("--") and f".{field}" in a.split("=")[0]), None)
    if culprit:
      return (f"{culprit}: the config has no field {field!r}; the config file lists every "
              "field with its default")
  return f"bad command line: {type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if _debug(argv):
      raise
    fail(_flag_message(e, argv) + " (--helpshort lists the flags)")


_warned: set[str] = set()


def _warn_once(thread_name: str, line: str) -> None:
  """A background thread's failure (``ExcType: message``) as one line, each distinct one
  once: the main thread reports what it means."""
  if line not in _warned:
    _warned.add(line)
    sys.__stderr__.write(f"warning: background thread {thread_name}: {line}\n")


def _thread_excepthook(args) -> None:
  if args.exc_type is not SystemExit:
    text = str(args.exc_value).strip().splitlines()
    _warn_once(getattr(args.thread, "name", "?"),
               f"{args.exc_type.__name__}: {text[0] if text else ''}")


class _BackgroundTracebacks:
  """``sys.stderr`` for the run: the main thread's output as is; a traceback printed by
  another thread becomes its one `_warn_once` line. Native threads (TensorStore's
  callbacks into orbax's closed event loop after a failed write) print theirs straight to
  ``sys.stderr``, past ``sys.excepthook``, dozens at a time; other lines pass."""

  _CONTINUATION = ("  ", "Traceback (most recent call last):", "During handling",
                   "The above exception")

  def __init__(self, stream):
    self._stream = stream
    self._lock = threading.Lock()
    self._pending: dict[int, str] = {}
    self._in_traceback: dict[int, bool] = {}

  def write(self, text: str) -> int:
    thread = threading.current_thread()
    if thread is threading.main_thread():
      return self._stream.write(text)
    with self._lock:
      key = thread.ident or 0
      lines = (self._pending.pop(key, "") + text).split("\n")
      self._pending[key] = lines.pop()          # an unfinished line waits for its end
      for line in lines:
        if line.startswith("Traceback (most recent call last):"):
          self._in_traceback[key] = True
        elif not self._in_traceback.get(key):
          self._stream.write(line + "\n")
        elif line.strip() and not line.startswith(self._CONTINUATION):
          self._in_traceback[key] = False       # "ExcType: message" ends a traceback
          _warn_once(thread.name, line)
    return len(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


def run(main) -> None:
  """``app.run(main)``, user errors as one line (see the module docstring)."""
  def guarded(argv):
    if not _debug():    # here, after absl has set up its log handler on the real stderr
      threading.excepthook = _thread_excepthook
      sys.stderr = _BackgroundTracebacks(sys.stderr)
    try:
      compile_cache.enable()     # every entry point: sweeps recompile identical programs
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      if not is_user_error(e) or _debug():
        raise
      fail(describe(e))
  app.run(guarded, flags_parser=_parse_flags)
