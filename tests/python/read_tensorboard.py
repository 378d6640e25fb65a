#!/usr/bin/env python3
"""Read TensorBoard event files back with TensorBoard's own loader.

usage: python read_tensorboard.py LOGDIR

Finds every event file (name containing "tfevents") under LOGDIR, recursively,
and loads each directory holding such files with tensorboard's
EventAccumulator (size_guidance 0: keep every scalar and tensor event).
Prints one JSON object on stdout:

  {"scalars": {tag: [[step, value], ...]},   # simple_value summaries
   "text":    {tag: ["decoded string", ...]}} # plugin "text" string tensors

Within a tag, points are in file order (as TensorBoard keeps them).
EventAccumulator stops quietly at a bad record, so every file is first read
with tensorboard's own record reader: a CRC error or a truncated record
exits non-zero (read the files only after the writer has closed them).
Tags from a subdirectory DIR of LOGDIR are named "DIR/tag". NaN/inf
print as JSON NaN/Infinity. Needs only `pip install tensorboard`.
"""
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
from tensorboard.util import tensor_util


def check_records(path):
    """Fail on any CRC mismatch or truncated record (TFRecord framing)."""
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    n = 0
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return
        except errors.DataLossError as e:
            sys.exit(f"{path}: bad record #{n}: {e.message}")
        n += 1


def main():
    logdir = sys.argv[1]
    dirs = sorted(
        root for root, _, files in os.walk(logdir) if any("tfevents" in f for f in files)
    )
    if not dirs:
        sys.exit(f"no event files under {logdir}")
    out = {"scalars": {}, "text": {}}
    for d in dirs:
        for f in sorted(os.listdir(d)):
            if "tfevents" in f:
                check_records(os.path.join(d, f))
        rel = os.path.relpath(d, logdir)
        prefix = "" if rel == "." else rel + "/"
        acc = ea.EventAccumulator(d, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in tags[ea.SCALARS]:
            out["scalars"][prefix + tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
        for tag in tags[ea.TENSORS]:
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "text":
                continue
            texts = []
            for e in acc.Tensors(tag):
                arr = tensor_util.make_ndarray(e.tensor_proto)
                texts.extend(
                    x.decode("utf-8") if isinstance(x, bytes) else str(x)
                    for x in arr.reshape(-1)
                )
            out["text"][prefix + tag] = texts
    json.dump(out, sys.stdout, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
