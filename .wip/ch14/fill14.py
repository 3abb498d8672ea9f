import re, sys, nbformat
src = sys.argv[1]  # executed notebook to read numbers from
dst = sys.argv[2]  # notebook whose markdown placeholders get filled
nb = nbformat.read(src, 4)
text = "\n".join("".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream")
                 for c in nb.cells if c.cell_type == "code")
def grab(pattern):
    m = re.search(pattern, text)
    if not m:
        raise SystemExit(f"missing: {pattern}")
    return m.groups()
IV = r"([+-]\d\.\d{4}) \(95% interval ([+-]\d\.\d{4}) to ([+-]\d\.\d{4})\)"
def verdict(d, lo, hi):
    return "holds zero" if float(lo) <= 0 <= float(hi) else ("lies above zero" if float(lo) > 0 else "lies below zero")
pool = grab(r"\+ pooler\s+trainable ([\d,]+) \(([\d.]+%)\) \| accuracy (\d\.\d{4}) \((\d\.\d{4}) to (\d\.\d{4})\)")
alll = grab(r"all-linear\s+trainable ([\d,]+) \(([\d.]+%)\) \| accuracy (\d\.\d{4}) \((\d\.\d{4}) to (\d\.\d{4})\)")
dpool = grab(r"\+ pooler - LoRA r=8 \(query, value\), accuracy: " + IV)
dall = grab(r"all-linear - LoRA r=8 \(query, value\), accuracy: " + IV)
foot = grab(r"get_memory_footprint: QLoRA ([\d.]+) MiB \| LoRA on the fp32 model ([\d.]+) MiB")
emb = grab(r"of which the embeddings \(no linear layer, not quantized\): ([\d.]+) MiB, torch.float32")
layers4 = grab(r"4-bit layers: (\d+), the pooler's included: True")
bnbv = grab(r"bitsandbytes (\d+\.\d+\.\d+)")
qtr = grab(r"trainable: ([\d,]+) \(LoRA in fp32: ([\d,]+)\)")
q = grab(r"QLoRA r=8: accuracy (\d\.\d{4}) \((\d\.\d{4}) to (\d\.\d{4})\) \| macro-F1 (\d\.\d{4})")
dq = grab(r"QLoRA - LoRA, accuracy: " + IV)
both_zero = verdict(*dpool) == "holds zero" and verdict(*dall) == "holds zero"
pooler = (
f"# Training the pooler in full next to the head gives {pool[0]} trainable parameters ({pool[1]} of the model) and an\n"
f"# accuracy of {pool[2]} ({pool[3]} to {pool[4]}); LoRA on every linear layer trains {alll[0]} ({alll[1]}) and scores\n"
f"# {alll[2]} ({alll[3]} to {alll[4]}). Against LoRA on `query` and `value` (0.7400), the differences are {dpool[0]}\n"
f"# (interval {dpool[1]} to {dpool[2]}, it {verdict(*dpool)}) and {dall[0]} ({dall[1]} to {dall[2]}, it {verdict(*dall)}).\n"
+ ("# So the frozen, untrained pooler costs LoRA nothing this run can see; what changes for sure is the count of\n"
   "# trained parameters and the size of the adapter (the table at the end)."
   if both_zero else
   "# The intervals, not the point values, say which of these differences this run can see; one seed and one\n"
   "# learning rate, chosen for LoRA on `query` and `value`, so a variant may do better at another rate."))
qlora = (
f"# bitsandbytes {bnbv[0]} trains through 4-bit layers on this CPU: the run above went to its end. QLoRA trains the\n"
f"# same {qtr[0]} parameters as LoRA; `get_memory_footprint` gives {foot[0]} MiB against {foot[1]} MiB for LoRA on the\n"
f"# fp32 model. Only the {layers4[0]} linear layers of the body (the pooler's included) are 4-bit: the embeddings are\n"
f"# no linear layer and stay fp32, {emb[0]} of those {foot[0]} MiB. It scores an accuracy of\n"
f"# {q[0]} ({q[1]} to {q[2]}), macro-F1 {q[3]}; against LoRA on the fp32 model the difference is {dq[0]} (interval\n"
f"# {dq[1]} to {dq[2]}: it {verdict(*dq)}). Its training time is not a measure of 4-bit alone: gradient\n"
f"# checkpointing, which `prepare_model_for_kbit_training` turned on, recomputes each layer's forward pass.")
final = (
"# In this small run (640 training reviews, one epoch, 300 test reviews) each difference above comes with its\n"
"# interval over movies: LoRA minus full fine-tuning is -0.0067 (-0.0492 to +0.0342), no difference this run can\n"
"# see. LoRA trains 0.33% of the parameters and ships an adapter of 0.29 MiB against 86.66 MiB for the full model.\n"
"# A few dozen steps on a few hundred reviews are a demonstration, not a fine-tune; the full run (`make full`: all\n"
"# of train) is in the book's results table.")
summary = (
"# - LoRA keeps $W$ frozen and learns $\\Delta W = \\frac{\\alpha}{r} BA$ with $A$ `(r, in)` and $B$ `(out, r)`; $B$\n"
"#   starts at zero, so training starts from the base model exactly (max diff printed above).\n"
"# - On `query` and `value` of the 6 layers with $r = 8$, it trains 74,498 parameters (0.33% of the model), the head\n"
"#   included; `peft`'s `get_peft_model` builds the same (same count, same logits). The adapter is 0.29 MiB;\n"
"#   `merge_and_unload` folds it into the weights with differences at float rounding.\n"
"# - Against full fine-tuning in this run: accuracy 0.7400 against 0.7467, a difference whose interval over movies\n"
"#   holds zero; per example at the same batch size, a LoRA step costs less, far from in proportion to 0.33%.\n"
"# - $\\alpha / r$ changes with the rank unless $\\alpha$ does: at $\\alpha = 2r$ and one learning rate, $r = 8$ beat\n"
"#   $r = 2$ and $r = 32$ here, a result about these settings, not about rank in general.\n"
"# - With `task_type=\"SEQ_CLS\"` peft trains and saves only `classifier` / `score`: BERT's pooler stays frozen.\n"
f"#   Training it changed accuracy by {dpool[0]} (interval {dpool[1]} to {dpool[2]}: it {verdict(*dpool)}); LoRA on all\n"
f"#   linear layers by {dall[0]} ({dall[1]} to {dall[2]}: it {verdict(*dall)}), at a learning rate chosen for `query`, `value`.\n"
f"# - QLoRA trains on this CPU: 4-bit base ({foot[0]} MiB against {foot[1]} MiB), same trainable count, accuracy\n"
f"#   {q[0]} against LoRA's 0.7400 ({dq[0]}, interval {dq[1]} to {dq[2]}).")
SCORES = '# On these 300 reviews of 50 movies, full fine-tuning scores an accuracy of 0.7467 (95% interval 0.6930 to 0.7964)\n# and LoRA 0.7400 (0.6816 to 0.7884). Their difference, -0.0067, has an interval from -0.0492 to +0.0342 that holds\n# zero: no difference this run can see. The interval covers the choice of test movies, not the training seed (one\n# seed here), so it is if anything too narrow.'
SWEEP = '# With the scale held at 2 and the learning rate chosen for $r = 8$, the rank does matter in this run, against\n# the more-is-better story: $r = 8$ scores 0.7400, $r = 2$ 0.6333 and $r = 32$ 0.6767, and both differences from\n# $r = 8$ have intervals below zero (-0.1067, from -0.1812 to -0.0396; -0.0633, from -0.1198 to -0.0098). $r = 2$\n# ends far lower in macro-F1 (0.3878) than in accuracy, so its F1 on one of the two classes is low. What this\n# supports is narrow: one seed, 80 steps, one learning rate for all ranks; a rank that trains badly at this rate might do\n# better at another, which this sweep does not test.'
out = nbformat.read(dst, 4)
n = 0
for c in out.cells:
    if c.cell_type != "markdown":
        continue
    for key, value in (("SCORES_PROSE", SCORES), ("SWEEP_PROSE", SWEEP), ("POOLER_PROSE", pooler), ("QLORA_PROSE", qlora), ("FINAL_PROSE", final), ("SUMMARY_PROSE", summary)):
        if key in c.source:
            c.source = c.source.replace(key, "\n".join(line[2:] if line.startswith("# ") else line[1:] for line in value.split("\n")))
            n += 1
print("filled", n)
nbformat.write(out, dst)
