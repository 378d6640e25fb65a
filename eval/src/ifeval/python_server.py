# The Python side of grlo-eval's IFEval checks: lm-eval scores three instruction kinds with
# NLTK (punkt sentence splitting, word_tokenize) and three with langdetect, and these answer
# exactly as lm-eval's calls do. One JSON request per line on stdin, one answer per line.
import json
import sys


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    try:
        import nltk
    except Exception as e:  # noqa: BLE001 - any import failure is "missing"
        return answer({"error": f"nltk is not importable ({e})"})
    try:
        import langdetect
    except Exception as e:  # noqa: BLE001
        return answer({"error": f"langdetect is not importable ({e})"})
    try:
        punkt_tab = nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return answer(
            {
                "error": "nltk's punkt_tab data (tokenizers/punkt_tab/english/) is not in "
                f"nltk.data.path {nltk.data.path}; unpack it there or point NLTK_DATA at it"
            }
        )
    from importlib.metadata import version

    # lm-eval's instructions_util loads the sentence splitter by exactly this name.
    sentences = nltk.data.load("nltk:tokenizers/punkt/english.pickle")
    answer(
        {
            "ready": True,
            "nltk": nltk.__version__,
            "langdetect": version("langdetect"),
            "punkt_tab": str(punkt_tab),
        }
    )
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            op, text = request["op"], request["text"]
            if op == "sentences":
                result = {"n": len(sentences.tokenize(text))}
            elif op == "lang":
                # lm-eval does not seed langdetect's DetectorFactory; neither does this.
                try:
                    result = {"lang": langdetect.detect(text)}
                except langdetect.LangDetectException as e:
                    result = {"lang": None, "why": str(e)}
            elif op == "capital_words":
                words = nltk.word_tokenize(text)
                result = {"n": sum(1 for w in words if w.isupper())}
            else:
                result = {"error": f"unknown op {op!r}"}
        except Exception as e:  # noqa: BLE001 - reported to the caller, which names the item
            result = {"error": f"{type(e).__name__}: {e}"}
        answer(result)


main()
