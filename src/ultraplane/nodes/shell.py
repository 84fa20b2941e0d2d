"""A tiny `sh -c` interpreter: what a simulated container's command (or an exec probe) would do.

Nothing runs. A script is read as a list of simple commands joined by `;`, `&&`, `||`, `|` and
`&`, and each command the simulation knows is "performed" on a clock and a set of files:
`sleep` advances the clock, `exit`/`true`/`false` set the status, `echo`/`printf` print,
`touch`/`rm`/`>` create and remove files, and `cat`/`test`/`[`/`ls` check them. That is enough for
the usual shapes: `sh -c "exit 3"`, `sleep 5; exit 1`, and the liveness example of the Kubernetes
docs (`touch /tmp/healthy; sleep 30; rm -f /tmp/healthy; sleep 600` probed by `cat /tmp/healthy`).

A program the simulation does not know (a server, `python app.py`) is `unknown`: the caller decides
(a service runs until stopped, a batch step succeeds). `while`/`until` loops run forever; other
compound commands (`if`, `for`, `case`, functions) make the whole script unknown.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

SHELLS = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh"})
HARMLESS = frozenset({"date", "hostname", "env", "printenv", "pwd", "whoami", "id", "uname", "mkdir", "cd",
                      "set", "export", "chmod", "chown", "ln", "cp", "mv", "sync", "wait", "trap", "ulimit",
                      "umask", "wget", "curl", "nslookup", "grep"})
_COMPOUND = frozenset({"if", "then", "else", "elif", "fi", "for", "case", "esac", "function", "{", "}", "(", ")",
                       "select"})
_LOOPS = frozenset({"while", "until"})
_DUP = re.compile(r"\d?>&\d|&>")  # 2>&1 and &>: redirections, not background jobs
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_REDIRECT = frozenset({">", ">>", "1>", "1>>", "2>", "2>>", "<"})

Exists = Callable[[str], bool]


@dataclass
class Outcome:
    """What a script did: how long it took (None: forever), its status, output and file changes."""
    seconds: float | None = 0.0
    status: int = 0
    output: list[str] = field(default_factory=list)
    files: list[tuple[float, str, bool]] = field(default_factory=list)  # (at, path, exists afterwards)
    unknown: bool = False  # a command the simulation cannot interpret ran
    unreadable: bool = False  # a construct it cannot follow (if/for/case, bad quoting): nothing is known
    exited: bool = False  # `exit` ended the script


def script_of(argv: list[str]) -> str:
    """`sh -c "..."` → the script; any other argv → itself as one command."""
    if argv and argv[0].rsplit("/", 1)[-1] in SHELLS:
        for i, arg in enumerate(argv[1:], 1):
            if arg.startswith("-") and "c" in arg[1:] and not arg.startswith("--"):
                return argv[i + 1] if i + 1 < len(argv) else ""
        return ""  # a shell reading stdin: nothing to do
    return shlex.join(argv)


def _tokens(script: str) -> list[str] | None:
    lexer = shlex.shlex(_DUP.sub(" ", script.replace("\n", " ; ")), posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes
        return None


def _seconds(args: list[str]) -> float | None:
    """GNU sleep: the sum of its operands (`infinity` → forever); None when unreadable."""
    total = 0.0
    for arg in args:
        if arg in ("inf", "infinity"):
            return float("inf")
        match = _DURATION.match(arg)
        if match is None:
            return None
        total += float(match.group(1)) * _UNIT[match.group(2)]
    return total if args else None


class _Run:
    def __init__(self, exists: Exists | None, batch: bool) -> None:
        self.clock = 0.0
        self.changes: dict[str, bool] = {}  # files created/removed so far by the script
        self.outcome = Outcome()
        self.exists_outside = exists
        self.batch = batch

    def exists(self, path: str) -> bool:
        if path in self.changes:
            return self.changes[path]
        return True if self.exists_outside is None else self.exists_outside(path)

    def set_file(self, path: str, present: bool) -> None:
        self.changes[path] = present
        self.outcome.files.append((self.clock, path, present))

    def command(self, words: list[str]) -> int | None:
        """Perform one simple command; its status (None: it never returns)."""
        while words and "=" in words[0] and not words[0].startswith("="):
            words = words[1:]  # FOO=bar cmd
        plain: list[str] = []
        i = 0
        while i < len(words):  # redirections: `> file` creates it
            word = words[i]
            if word in _REDIRECT and i + 1 < len(words):
                if word.startswith((">", "1", "2")) and words[i + 1] != "/dev/null":
                    self.set_file(words[i + 1], True)
                i += 2
                continue
            if word.startswith(">") and len(word) > 1:
                self.set_file(word.lstrip(">"), True)
            else:
                plain.append(word)
            i += 1
        if not plain:
            return 0
        name, args = plain[0].rsplit("/", 1)[-1], plain[1:]
        if name == "exec" and args:
            return self.command(args)
        if name in ("true", ":"):
            return 0
        if name == "false":
            return 1
        if name == "sleep":
            seconds = _seconds(args)
            if seconds is None:
                self.outcome.output.append("sleep: invalid number")
                return 1
            if seconds == float("inf"):
                return None
            self.clock += seconds
            return 0
        if name in ("echo", "printf"):
            words = [a for a in args if not (name == "echo" and a in ("-n", "-e"))]
            text = " ".join(words)
            if name == "printf":
                text = text.replace("\\n", "\n").rstrip("\n")
            self.outcome.output.extend(text.split("\n") if text else [""])
            return 0
        if name == "touch":
            for path in args:
                if not path.startswith("-"):
                    self.set_file(path, True)
            return 0
        if name == "rm":
            force = any(a.startswith("-") and "f" in a for a in args)
            status = 0
            for path in (a for a in args if not a.startswith("-")):
                if not self.exists(path) and not force:
                    self.outcome.output.append(f"rm: can't remove '{path}': No such file or directory")
                    status = 1
                self.set_file(path, False)
            return status
        if name in ("cat", "ls", "head"):
            status = 0
            for path in (a for a in args if not a.startswith("-")):
                if not self.exists(path):
                    self.outcome.output.append(f"cat: can't open '{path}': No such file or directory"
                                               if name != "ls" else f"ls: {path}: No such file or directory")
                    status = 1 if name != "ls" else 2
            return status
        if name == "tail":  # `tail -f /dev/null`: the classic way to keep a container up
            return None if any(a.startswith("-") and "f" in a for a in args) else 0
        if name in ("test", "["):
            return self.test([a for a in args if a != "]"])
        if name in HARMLESS:
            return 0
        self.outcome.unknown = True
        return 0 if self.batch else None  # a server runs until stopped; a batch step is taken to succeed

    def test(self, args: list[str]) -> int:
        negate = bool(args) and args[0] == "!"
        if negate:
            args = args[1:]
        if len(args) == 2 and args[0] in ("-e", "-f", "-d", "-s", "-r"):
            result = self.exists(args[1])
        elif len(args) == 3 and args[1] in ("=", "=="):
            result = args[0] == args[2]
        elif len(args) == 3 and args[1] == "!=":
            result = args[0] != args[2]
        else:
            result = bool(args and args[0])
        return 0 if result != negate else 1


def interpret(argv: list[str], batch: bool = True, exists: Exists | None = None) -> Outcome:
    """Run `argv` in the simulation: `batch` decides what an unknown program does (see module doc)."""
    tokens = _tokens(script_of(argv))
    run = _Run(exists, batch)
    if tokens is None or any(t in _COMPOUND for t in tokens):
        run.outcome.unknown = run.outcome.unreadable = True
        run.outcome.seconds = 0.0 if batch else None
        return run.outcome
    # split into (connector before, words, background) commands
    commands: list[tuple[str, list[str], bool]] = []
    connector, words = ";", []
    for token in [*tokens, ";"]:
        if token in (";", "&&", "||", "|", "&"):
            if words:
                commands.append((connector, words, token == "&"))
            elif token == "&" and commands:
                continue
            connector, words = ("|" if token == "|" else ";" if token == "&" else token), []
        else:
            words.append(token)
    status = 0
    for connector, words, background in commands:
        if (connector == "&&" and status != 0) or (connector == "||" and status == 0):
            continue
        if words[0] in _LOOPS:
            run.outcome.seconds = None  # `while true; do ...; done`: runs until stopped
            return run.outcome
        if words[0] == "exit":
            try:
                status = int(words[1]) % 256 if len(words) > 1 else status
            except ValueError:
                status = 2
            run.outcome.exited = True
            break
        if background:  # `cmd &`: started, not waited for
            clock = run.clock
            run.command(words)
            run.clock = clock
            status = 0
            continue
        result = run.command(words)
        if result is None:
            run.outcome.seconds = None
            run.outcome.status = 0
            return run.outcome
        status = result
    run.outcome.seconds = run.clock
    run.outcome.status = status
    return run.outcome


def exists_at(files: list[tuple[float, str, bool]], at: float) -> Exists:
    """The container's files `at` seconds after its start, for a probe run then.

    A path the container's command creates exists from then on (until removed); one it removes
    first was there before. Any other path is taken to be part of the image.
    """
    def exists(path: str) -> bool:
        changes = [(when, state) for when, name, state in files if name == path]
        if not changes:
            return True
        present = not changes[0][1]
        for when, state in changes:
            if when <= at:
                present = state
        return present

    return exists
