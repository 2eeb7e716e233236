"""Every command the documentation gives a reader works as written.

The commands come from README.md, docs/*.md (fenced shell blocks, and inline code that starts with a
command) and the chart's NOTES.txt as Helm renders it. Each is either run, or checked against what it
names, so that the documentation cannot drift from the code:

- the README's quick start (the shell block that creates a token and calls the API, then the Python
  snippet, in the same shell) runs twice in a row against a real local stack (sender, consumer, vLLM
  simulator, real RabbitMQ), as a newcomer would paste it; so do the NOTES' token and call steps;
- every `llm-dispatcher ...` invocation (also inside `$(...)` or after `kubectl exec ... --`) is parsed by
  the real argparse parser (`llm_dispatcher.cli.build_parser`); usage synopses (`[--opt X]`, `a | b`,
  `NAME`) are expanded into every form they allow;
- `make X` names a Makefile target; `helm install` renders the chart with the values and `--set`s given;
  `kubectl` names objects the chart renders (Deployment, StatefulSet, Service port), or the Secret the
  example values refer to; `docker build` names the Dockerfile and the chart's appVersion; a script run
  with `.venv/bin/python` exists.

A command no checker knows fails the test: a new kind of command needs a check before it is documented.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml

from llm_dispatcher.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llm-dispatcher"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = {"make", "helm", "kubectl", "docker", "curl", "export", "llm-dispatcher",
                 ".venv/bin/llm-dispatcher", ".venv/bin/python"}  # fmt: skip
README_BASE_URL = "http://127.0.0.1:8080"
# NOTES.txt is checked as rendered for these installs (release, namespace, values).
NOTES_INSTALLS = {
    "default": ("llmd", "llm", {}),
    "example": ("llmd", "llm", yaml.safe_load((ROOT / "values.example.yaml").read_text())),
    "existing-tokens-secret": ("prod", "ai", {"existingTokensSecret": {"name": "api-tokens"}}),
    "console-ingress": (
        "ops",
        "llm-ops",
        {"console": {"ingress": {"enabled": True}, "adminToken": {"existingSecret": "admin-token"}}},
    ),
}


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str  # one shell command, continuation lines joined
    fenced: bool  # from a fenced block (False: inline code in prose)

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


# ---------------------------------------------------------------------------------------- extraction


def _join_continuations(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    start, parts = 0, []
    for number, line in lines:
        if not parts:
            start = number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1].strip())
            continue
        parts.append(line.strip())
        yield start, " ".join(p for p in parts if p)
        parts = []
    if parts:
        yield start, " ".join(parts)


def fenced_blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number of the first body line, language, body) of every fenced code block."""
    for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
        yield text.count("\n", 0, m.start()) + 2, m[1], m[2]


def _first_word(command: str) -> str:
    """The program a shell command runs (after any leading VAR=value assignments)."""
    for word in command.split():
        if not re.match(r"^\w+=", word):
            return word
    return ""


def is_command(command: str) -> bool:
    word = _first_word(command)
    return word in COMMAND_WORDS or word.startswith("scripts/")


def indented_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line of an indented (4 spaces) code block after a blank line."""
    lines = text.splitlines()
    in_block = False
    for i, line in enumerate(lines):
        if line.startswith("    ") and line.strip() and (in_block or (i and not lines[i - 1].strip())):
            in_block = True
            yield i + 1, line
        elif line.strip():
            in_block = False


def commands_in(path: Path, text: str | None = None) -> list[Command]:
    text = path.read_text() if text is None else text
    name = path.relative_to(ROOT)
    out: list[Command] = []
    prose = text
    for first, lang, body in fenced_blocks(text):
        prose = prose.replace(body, "\n" * body.count("\n"), 1)
        if lang not in SHELL_LANGS:
            continue
        lines = [(first + i, line) for i, line in enumerate(body.splitlines())]
        for number, command in _join_continuations(lines):
            if command and not command.startswith("#"):
                out.append(Command(f"{name}:{number}", command, fenced=True))
    for number, command in _join_continuations(list(indented_blocks(prose))):
        if is_command(command):
            out.append(Command(f"{name}:{number}", command, fenced=True))
    for m in re.finditer(r"`([^`\n]+)`", prose):
        span = m[1].strip()
        words = span.split()
        # `kubectl describe` in a sentence names a tool, not a command to run: those need an object too.
        least = 3 if words and words[0] in ("kubectl", "helm", "docker") else 2
        if len(words) >= least and is_command(span):
            out.append(Command(f"{name}:{text.count(chr(10), 0, m.start()) + 1}", span, fenced=False))
    return out


def render_chart(values: dict, release: str, namespace: str) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=release, namespace=namespace, is_install=True)


def notes_commands(install: str) -> list[Command]:
    release, namespace, values = NOTES_INSTALLS[install]
    manifests = render_chart(values, release, namespace)
    (notes,) = [t for p, t in manifests.items() if p.endswith("NOTES.txt")]
    where = f"NOTES.txt[{install}]"
    lines = [(i + 1, line) for i, line in enumerate(notes.splitlines()) if line.startswith("   ")]
    out = []
    for number, command in _join_continuations(lines):
        if is_command(command):
            out.append(Command(f"{where}:{number}", command, fenced=True))
    return out


def documented_commands() -> list[Command]:
    found = [c for doc in DOCS for c in commands_in(doc)]
    return found + [c for install in NOTES_INSTALLS for c in notes_commands(install)]


# ------------------------------------------------------------------------------------------ parsing


_CLI = re.compile(r"(?:^|(?<=[\s(]))(?:\.venv/bin/)?llm-dispatcher(?![-\w./:])((?:\s+[^\s);|&]+)*)")


def cli_invocations(command: str) -> list[list[str]]:
    """The argv of every `llm-dispatcher ...` in a shell command: on its own, in `$(...)`, after `--`."""
    command = re.sub(r"#.*$", "", command) if not re.search(r"['\"]", command) else command
    command = re.sub(r"\[[^\[\]]*\]", lambda m: m[0].replace("|", "\x00"), command)  # a | b in a synopsis
    return [[a.replace("\x00", "|") for a in shlex.split(m[1])]
            for m in _CLI.finditer(command.replace("$RANDOM", "12345"))]  # fmt: skip


def expand_synopsis(argv_text: str) -> list[str]:
    """`create NAME --priority 0..10 [--expires-in 30d] [--models a,b | --all-models]` -> every form it
    allows with each optional part present (each alternative once), placeholders filled in."""
    m = re.search(r"\[([^\[\]]*)\]", argv_text)
    if m:
        forms = []
        for alternative in m[1].split("|"):
            forms += expand_synopsis(argv_text[: m.start()] + alternative.strip() + argv_text[m.end() :])
        return forms
    filled = re.sub(r"\b\d+\.\.(\d+)\b", r"\1", argv_text)  # 0..10 -> 10
    filled = re.sub(r"(?<![\w-])N(?![\w-])", "3", filled)
    filled = re.sub(r"(?<![\w-])[A-Z][A-Z_]+(?![\w-])", lambda w: w[0].lower(), filled)  # NAME -> name
    return [filled]


def parse_cli(argv: list[str]) -> Any:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(argv)
        except SystemExit:
            raise AssertionError(f"llm-dispatcher {shlex.join(argv)}: {err.getvalue().strip()}") from None


def check_cli(command: str) -> int:
    """Parses every `llm-dispatcher` invocation in `command`; returns how many there were."""
    invocations = cli_invocations(command)
    for argv in invocations:
        text = shlex.join(argv)
        synopsis = re.search(r"[\[|]|(?<![\w-])[A-Z][A-Z_]*(?![\w-])|\d\.\.\d", text)
        forms = expand_synopsis(" ".join(argv)) if synopsis else [text]
        for form in forms:
            parse_cli(shlex.split(form))
    return len(invocations)


# ------------------------------------------------------------------------------------------ checkers


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def check_make(argv: list[str]) -> None:
    targets = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
    missing = sorted(set(targets) - make_targets())
    assert targets and not missing, f"no Makefile target {missing}"


def _set_value(values: dict, dotted: str, value: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        values = values.setdefault(key, {})
    values[leaf] = yaml.safe_load(value)


def helm_install(argv: list[str]) -> tuple[str, str, dict[str, str]]:
    """Renders `helm install RELEASE CHART [-n NS] [-f FILE] [--set k=v] [--create-namespace]`."""
    assert argv[:2] == ["helm", "install"], argv
    positional, values, namespace = [], {}, "default"
    it = iter(argv[2:])
    for arg in it:
        if arg in ("-n", "--namespace"):
            namespace = next(it)
        elif arg in ("-f", "--values"):
            path = ROOT / next(it)
            assert path.is_file(), f"no values file {path}"
            values = {**values, **(yaml.safe_load(path.read_text()) or {})}
        elif arg == "--set":
            key, _, value = next(it).partition("=")
            _set_value(values, key, value)
        elif arg == "--create-namespace":
            pass
        else:
            assert not arg.startswith("-"), f"helm install option {arg} is not checked here"
            positional.append(arg)
    release, chart = positional
    assert (ROOT / chart).resolve() == CHART, f"{chart} is not the chart"
    return release, namespace, render_chart(values, release, namespace)


def rendered_objects(manifests: dict[str, str]) -> dict[tuple[str, str], dict]:
    objects = {}
    for path, text in manifests.items():
        if path.endswith(".txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


KUBECTL_KINDS = {"deploy": "Deployment", "deployment": "Deployment", "statefulset": "StatefulSet",
                 "sts": "StatefulSet", "svc": "Service", "service": "Service"}  # fmt: skip


def check_kubectl(argv: list[str], installs: list[tuple[str, str, dict]]) -> None:
    """Objects a kubectl command names exist in the chart as rendered for that namespace's install."""
    args = argv[1:]
    namespace = "default"
    if args[:1] in (["-n"], ["--namespace"]):
        namespace, args = args[1], args[2:]
    verb = args[0]
    if verb == "apply":  # the RabbitMQ Cluster Operator's own manifest, from its releases
        assert args[1] == "-f" and args[2].startswith("https://github.com/rabbitmq/cluster-operator/releases/"), argv
        return
    if verb == "create":  # a Secret the example values refer to, with the key they read
        assert args[1:3] == ["secret", "generic"], argv
        name, key = args[3], args[4].removeprefix("--from-literal=").split("=")[0]
        example = yaml.safe_load((ROOT / "values.example.yaml").read_text())
        refs = [(m.get("hfToken") or {}) for m in example["models"]]
        assert {"existingSecret": name, "key": key} in refs, f"values.example.yaml does not read {name}/{key}"
        return
    refs = [a for a in args if "/" in a and a.split("/")[0] in KUBECTL_KINDS]
    assert refs, f"kubectl {verb}: no object named"
    wanted = {(KUBECTL_KINDS[ref.split("/")[0]], ref.split("/", 1)[1]) for ref in refs}
    renders = [rendered_objects(m) for _, ns, m in installs if ns == namespace]
    assert renders, f"kubectl -n {namespace}: no documented install in that namespace"
    matching = [objects for objects in renders if wanted <= objects.keys()]
    assert matching, f"the chart renders no {sorted(wanted)} in namespace {namespace}"
    objects = matching[0]
    if verb == "port-forward":
        remote = int(args[args.index(refs[0]) + 1].split(":")[1])
        ports = [p["port"] for p in objects[("Service", refs[0].split("/", 1)[1])]["spec"]["ports"]]
        assert remote in ports, f"{refs[0]} has no port {remote} ({ports})"
    if verb == "exec":
        assert "--" in args, argv
        deployment = objects[("Deployment", refs[0].split("/", 1)[1])]
        images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
        assert any("llm-dispatcher" in i for i in images), "exec'd into a pod without the llm-dispatcher image"
        tail = args[args.index("--") + 1 :]
        assert tail[0] == "llm-dispatcher", tail
        parse_cli(tail[1:])
    if verb == "rollout":
        assert args[1] == "status", argv


def check_command(command: Command, installs: list[tuple[str, str, dict]]) -> str:
    """Checks one documented command; returns how (for the report), raises AssertionError if broken."""
    inner = [c for c in re.findall(r"\$\(([^()]*)\)", command.text) if is_command(c)]
    for text in inner:  # `export TOKEN=$(kubectl ... -- llm-dispatcher ...)`: the command inside is checked
        check_command(Command(command.where, text, command.fenced), installs)
    argv = shlex.split(command.text.replace("$RANDOM", "12345"), comments=True)
    while re.match(r"^\w+=", argv[0]):  # VAR=value before the program
        argv = argv[1:]
    word = argv[0]
    parsed = check_cli(command.text)
    if word in ("llm-dispatcher", ".venv/bin/llm-dispatcher"):
        assert parsed, command
        return "parsed"
    if word == "make":
        check_make(argv)
        return "Makefile target"
    if word == "helm":
        if argv[1] == "install":
            release, namespace, _ = helm_install(argv)
            return f"rendered as {release} in {namespace}"
        if argv[1] == "test":
            assert (argv[2], argv[argv.index("-n") + 1]) in {(r, n) for r, n, _ in installs}, command
            return "a documented release"
    if word == "kubectl":
        check_kubectl(argv, installs)
        return "objects rendered"
    if word == "docker" and argv[1] == "build":
        dockerfile = argv[argv.index("-f") + 1]
        assert (ROOT / dockerfile).is_file(), f"no {dockerfile}"
        tag = argv[argv.index("-t") + 1].rsplit(":", 1)[1]
        app_version = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
        assert tag == app_version, f"image tag {tag} is not the chart's appVersion {app_version}"
        return "Dockerfile and tag"
    if word == ".venv/bin/python" and argv[1] == "-m":
        module, rest = argv[2], argv[3:]
        found = importlib.util.find_spec(module) or (ROOT / module.replace(".", "/") / "__main__.py").is_file()
        assert found, f"no module {module}"
        paths = [a.split("::")[0] for a in rest if a.endswith(".py") or a.startswith("tests/")]
        assert all((ROOT / a).is_file() if a.endswith(".py") else (ROOT / a).is_dir() for a in paths), (
            f"no file or test directory among {paths}"
        )
        if module == "pytest" and "-m" in rest:
            markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
            marker = rest[rest.index("-m") + 1].removeprefix("not ").strip()
            assert any(m.split(":")[0] == marker for m in markers), f"no pytest marker {marker}"
        return "module and files exist"
    if word == ".venv/bin/python":
        script = argv[1]
        path = ROOT / script
        assert (script.endswith(".py") and path.is_file()) or (path / "__main__.py").is_file(), f"no script {script}"
        return "script exists"
    if word.startswith("scripts/"):
        path = ROOT / word
        assert path.is_file(), f"no script {word}"
        if len(argv) > 1:
            assert re.search(rf"^\s*{re.escape(argv[1])}\)", path.read_text(), re.M), f"{word} has no action {argv[1]}"
        return "script and action exist"
    if word == "export" and inner:
        return "the command inside checked; run by the quick-start tests"
    if word == "export" and argv[1].startswith("OPENAI_BASE_URL="):
        url = argv[1].split("=", 1)[1]
        assert re.fullmatch(r"https?://[\w.-]+(:\d+)?/v1", url), f"{url}: an OpenAI base URL ends in /v1"
        return "an OpenAI base URL"
    if word == "curl" and re.search(r"\$OPENAI_BASE_URL|" + re.escape(README_BASE_URL), command.text):
        return "run by the quick-start tests"
    raise AssertionError(f"no check knows this command: {command}")


@functools.cache
def documented_installs() -> list[tuple[str, str, dict]]:
    """(release, namespace, rendered manifests) of every documented `helm install` and of NOTES_INSTALLS."""
    installs = [helm_install(shlex.split(c.text, comments=True))
                for c in documented_commands() if c.text.startswith("helm install")]  # fmt: skip
    installs += [(r, n, render_chart(values, r, n)) for r, n, values in NOTES_INSTALLS.values()]
    return installs


# ------------------------------------------------------------------------------------ static checks


def test_the_documents_hold_the_commands_these_tests_check() -> None:
    commands = documented_commands()
    texts = [c.text for c in commands]
    assert any("tokens create" in t and t.startswith("export TOKEN=") for t in texts)
    assert any(t.startswith("helm install") for t in texts) and any(t.startswith("make run") for t in texts)
    notes = [c for c in commands if c.where.startswith("NOTES.txt[default]")]
    assert any("tokens create" in c.text for c in notes) and any("port-forward" in c.text for c in notes)


def test_every_documented_command_is_run_or_checked_against_what_it_names() -> None:
    installs = documented_installs()
    broken = []
    for command in documented_commands():
        try:
            check_command(command, installs)
        except AssertionError as exc:
            broken.append(f"{command}\n    -> {exc}")
    assert not broken, "documented commands that do not work:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("llm-dispatcher tokens create --name my-app --priority 5 --threshold 100", r"--name"),
        ("llm-dispatcher tokens create NAME --priority 0..10 [--expires-in 30d] [--colour red]", r"--colour"),
        ("llm-dispatcher tokens update NAME [--models a,b | --every-model]", r"--every-model"),
        ("export TOKEN=$(.venv/bin/llm-dispatcher tokens create me --priority high --threshold 1)", r"priority"),
        ("make runn", r"no Makefile target"),
        ("kubectl -n llm exec deploy/llmd-llm-dispatcher-gateway -- llm-dispatcher tokens list",
         r"renders no .*llmd-llm-dispatcher-gateway"),
        ("kubectl -n llm port-forward svc/llmd-llm-dispatcher-sender 8080:8080", r"has no port 8080"),
        ("helm install llmd charts/llm-dispatcher --set sender.replicaCount=-1", r"replicaCount"),
        ("docker build -f docker/Dockerfile -t r/llm-dispatcher:9.9.9 .", r"appVersion"),
        ("scripts/real-vllm.sh restart 18000", r"no action restart"),
        ("wget http://example.com/x", r"no check knows"),
    ],
    ids=["notes-old-name-flag", "unknown-option-in-synopsis", "unknown-alternative", "bad-option-value",
         "unknown-make-target", "unknown-deployment", "wrong-service-port", "invalid-set", "stale-image-tag",
         "unknown-script-action", "unknown-command"],
)  # fmt: skip
def test_a_command_that_drifted_from_the_code_is_caught(command: str, message: str) -> None:
    installs = documented_installs()
    with pytest.raises((AssertionError, helm.HelmError), match=message):
        check_command(Command("example", command, fenced=True), installs)


def test_the_notes_token_command_uses_the_positional_name() -> None:
    for install in NOTES_INSTALLS:
        (create,) = [c for c in notes_commands(install) if "tokens create my-app" in c.text]
        (argv,) = cli_invocations(create.text)
        assert parse_cli(argv).name == "my-app"


# ---------------------------------------------------------------------------------------- run them


@pytest.fixture
def quickstart_stack(stack_factory):
    """The README's stack, on free ports: a simulator serving sim-model behind a consumer and a sender."""
    stack = stack_factory()
    stack.add_consumer("sim-model", stack.add_sim(model="sim-model", served_model_names=["sim-model"],
                                                   default_output_tokens=4))  # fmt: skip
    stack.wait_models({"sim-model"}, stack.create_token("probe"))
    yield stack
    stack.wait_idle()


def readme_quickstart() -> tuple[str, list[str]]:
    """(the shell block that creates a token and calls the API, every Python block), from the README."""
    text = (ROOT / "README.md").read_text()
    shells = [
        b
        for _, lang, b in fenced_blocks(text)
        if lang in SHELL_LANGS and "tokens create" in b and "curl" in b and "/v1/chat/completions" in b
    ]
    pythons = [b for _, lang, b in fenced_blocks(text) if lang == "python"]
    assert len(shells) == 1 and pythons, "the README's quick start moved: update this test"
    return shells[0], pythons


def run_in_a_shell(script: str, stack, **env: str) -> subprocess.CompletedProcess:
    """As a reader pastes it into bash in the repository, with the local stack's address and database."""
    script = script.replace(README_BASE_URL, stack.url)
    environ = {**os.environ, "LLMD_DATABASE_URL": stack.database_url, **env}
    environ.pop("TOKEN", None)
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)


def test_the_readme_quick_start_works_as_written_twice_in_a_row(quickstart_stack) -> None:
    shell, pythons = readme_quickstart()
    # The Python snippet runs in the same shell, after the token was exported, with the venv's python.
    python = ".venv/bin/python" if (ROOT / ".venv/bin/python").exists() else sys.executable
    script = shell + "".join(f"\n{python} - <<'PY'\n{block}PY\n" for block in pythons)
    for attempt in (1, 2):
        proc = run_in_a_shell(script, quickstart_stack)
        assert proc.returncode == 0 and not proc.stderr, f"run {attempt}: {proc.stderr}"
        reply, end = json.JSONDecoder().raw_decode(proc.stdout)
        assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"], proc.stdout
        printed = proc.stdout[end:].strip()
        assert printed, f"run {attempt}: the Python snippet printed nothing"


def test_a_taken_token_name_is_refused_loudly_as_the_readme_says(quickstart_stack) -> None:
    create = ".venv/bin/llm-dispatcher tokens create twice --priority 5 --threshold 50 --quiet"
    assert run_in_a_shell(create, quickstart_stack).returncode == 0
    again = run_in_a_shell(create, quickstart_stack)
    assert again.returncode == 2 and "already exists" in again.stderr and not again.stdout
    assert "exit status 2" in (ROOT / "README.md").read_text()


def test_the_notes_token_and_call_steps_work_against_a_running_sender(quickstart_stack) -> None:
    commands = notes_commands("default")
    (create,) = [c for c in commands if "tokens create my-app" in c.text]
    (call,) = [c for c in commands if c.text.startswith("curl")]
    (argv,) = cli_invocations(create.text)
    # What `kubectl exec deploy/... --` runs inside the sender's pod, run here against the local stack.
    inner = "export TOKEN=$(.venv/bin/llm-dispatcher " + shlex.join(argv) + ")"
    proc = run_in_a_shell(f"{inner}\n{call.text}\n", quickstart_stack, OPENAI_BASE_URL=quickstart_stack.base_url)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    models = json.loads(proc.stdout)
    assert models["object"] == "list" and "sim-model" in {m["id"] for m in models["data"]}


def test_the_readme_operations_block_works_as_written(quickstart_stack) -> None:
    """The admin token it creates lists the tokens and the usage over the admin API and the CLI."""
    text = (ROOT / "README.md").read_text()
    (block,) = [b for _, lang, b in fenced_blocks(text) if lang in SHELL_LANGS and "--admin" in b and "curl" in b]
    someone = quickstart_stack.create_token("someone")
    r = httpx.post(
        quickstart_stack.base_url + "/chat/completions",
        json={"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {someone}"},
        timeout=30,
    )
    assert r.status_code == 200
    quickstart_stack.usage_rows(1)  # one request to report on, written
    proc = run_in_a_shell(block, quickstart_stack)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    decoder, out, answers = json.JSONDecoder(), proc.stdout, []
    for _ in range(2):
        answer, end = decoder.raw_decode(out)
        answers.append(answer)
        out = out[end:].lstrip()
    tokens, usage = answers
    assert tokens["object"] == "list" and any(t["admin"] for t in tokens["data"])
    assert usage["object"] == "usage.aggregate" and usage["group_by"] == ["token", "model"]
    assert "someone" in out and "sim-model" in out, "the CLI's table names the token and the model"
