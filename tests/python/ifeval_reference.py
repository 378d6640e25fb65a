"""lm-eval's own IFEval judgements of a responses file, for grlo-eval's fixtures.

Imports lm-eval 0.4.8's ifeval task files by path (unzipped from its wheel: lm_eval/tasks/
ifeval/*.py; installing lm_eval would pull in torch) and writes, per response line, lm-eval's
strict and loose instruction lists. Needs nltk (with punkt_tab's English data), langdetect,
immutabledict and packaging. Not run in CI; its output is committed.

    python tests/python/ifeval_reference.py --lm-eval-dir target/lm-eval-ifeval \
        --data ifeval.jsonl --responses responses.jsonl --out reference.jsonl
"""

import argparse
import json
import sys
import types


def load_lm_eval(directory):
    """Makes `lm_eval.tasks.ifeval` a package whose files are those in `directory`."""
    for name, path in [("lm_eval", []), ("lm_eval.tasks", []), ("lm_eval.tasks.ifeval", [directory])]:
        module = types.ModuleType(name)
        module.__path__ = path
        sys.modules[name] = module
    import lm_eval.tasks.ifeval.utils as utils

    return utils


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lm-eval-dir", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--responses", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    utils = load_lm_eval(args.lm_eval_dir)
    docs = {}
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            docs[doc["key"]] = doc
    with open(args.responses, encoding="utf-8") as f, open(args.out, "w", encoding="utf-8") as out:
        for line in f:
            sample = json.loads(line)
            result = utils.process_results(docs[sample["key"]], [sample["response"]])
            out.write(
                json.dumps(
                    {
                        "key": sample["key"],
                        "strict": result["inst_level_strict_acc"],
                        "loose": result["inst_level_loose_acc"],
                    }
                )
                + "\n"
            )


main()
