#!/usr/bin/env bash
# Reward-model training memory and time against sequence length, beside PyTorch: the table of
# issue 10, as a new user measures it. For each N, one `grlo rm train --batch-size 2 --epochs 1
# --max-length N` step (2 pairs, so 4 sequences of N tokens) on the tiny reward model, its peak
# RSS and wall time from /usr/bin/time; then transformers (sdpa) on the same config, 4 sequences
# of N tokens, forward + Bradley–Terry loss + backward, its peak RSS growth over the process
# with the model loaded, and its time. Prints one row per N and the growth per doubling.
#
#   bash scripts/rm-train-scaling.sh                 # N = 512 1024 2048 4096
#   LENGTHS="1024 2048" bash scripts/rm-train-scaling.sh
#
# Needs a release build (cargo build --release) and python3 with torch and transformers.
set -euo pipefail
cd "$(dirname "$0")/.."

GRLO=${GRLO:-target/release/grlo}
MODEL=${MODEL:-configs/tiny/reward-model-init}
LENGTHS=${LENGTHS:-512 1024 2048 4096}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Two pairs whose chosen and rejected conversations are each longer than the largest N.
python3 - "$work/pairs.jsonl" <<'EOF'
import json, random, sys
rng = random.Random(0)
words = ("the of and to in is you that it he was for on are as with his they at be this have "
         "from or one had by word but not what all were we when your can said there use an each "
         "which she do how their if will up other about out many then them these so some her "
         "would make like him into time has look two more write go see number no way could "
         "people my than first water been call who oil its now find long down day did get come "
         "made may part great fun thanks").split()
with open(sys.argv[1], "w") as f:
    for _ in range(2):
        text = lambda n: " ".join(rng.choice(words) for _ in range(n))
        f.write(json.dumps({"prompt": text(3000), "chosen": text(3000), "rejected": text(3000)}) + "\n")
EOF

peer() {
    python3 - "$MODEL" "$1" <<'EOF'
import json, sys, time, torch
from transformers import AutoModelForSequenceClassification
torch.set_num_threads(2)
model_dir, n = sys.argv[1], int(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="sdpa")
model.train()
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
ids = torch.randint(0, model.config.vocab_size - 2, (4, n))
open("/proc/self/clear_refs", "w").write("5")
base = hwm()
start = time.perf_counter()
scores = model(input_ids=ids).logits[:, 0]
loss = -torch.nn.functional.logsigmoid(scores[0::2] - scores[1::2]).mean()
loss.backward()
elapsed = time.perf_counter() - start
print(json.dumps({"peak_growth": hwm() - base, "seconds": elapsed}))
EOF
}

printf "%6s %14s %10s %22s %12s\n" N "grlo peak RSS" "grlo wall" "PyTorch peak growth" "PyTorch time"
prev_grlo=""
for n in $LENGTHS; do
    /usr/bin/time -f "%M %e" -o "$work/time" "$GRLO" rm train --model "$MODEL" \
        --pairs "$work/pairs.jsonl" --out "$work/out-$n" --batch-size 2 --epochs 1 \
        --eval-fraction 0 --max-length "$n" >"$work/log" 2>&1 \
        || { cat "$work/log"; exit 1; }
    read -r kib wall <"$work/time"
    read -r peak secs < <(peer "$n" 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["peak_growth"], d["seconds"])')
    growth=""
    [ -n "$prev_grlo" ] && growth=$(python3 -c "print(f'  (x{$kib / $prev_grlo:.2f})')")
    printf "%6s %11.2f GB %8.1f s %19.2f GB %10.2f s%s\n" "$n" \
        "$(python3 -c "print($kib * 1024 / 1e9)")" "$wall" \
        "$(python3 -c "print($peak / 1e9)")" "$secs" "$growth"
    prev_grlo=$kib
done
