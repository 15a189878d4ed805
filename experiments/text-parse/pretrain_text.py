"""Experiment: pretrain the base's text encoder to parse captions into a spatially ordered scene
(count, orientation, attributes of the top/left object and of the other), then train the U-Net on it."""
import sys, time, torch, torch.nn as nn, torch.nn.functional as F
from glide.checkpoints import load_model, save_model
from glide.data.shapes import CaptionedShapes, caption_for, relation, SHAPES, COLOURS, SIZES
torch.manual_seed(0)
src, dest, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = load_model(src).train()
SH, CO, SZ = list(SHAPES), list(COLOURS), list(SIZES)

def targets(scene):
    if len(scene) == 1:
        first, second, orient = scene[0], None, 2
    else:
        a, b = scene[0], scene[1]
        rel = relation(a, b)
        orient = 0 if rel in ("above", "below") else 1
        first, second = (a, b) if rel in ("above", "to the left of") else (b, a)
    def obj(o):
        return [SH.index(o["shape"]), CO.index(o["colour"]), SZ.index(o["size"])] if o else [len(SH), len(CO), len(SZ)]
    return [orient, *obj(first), *obj(second)]

sizes = [3, len(SH), len(CO), len(SZ), len(SH) + 1, len(CO) + 1, len(SZ) + 1]
d = model.transformer_proj.out_features
heads = nn.ModuleList(nn.Linear(d, n) for n in sizes)
text_params = [p for n, p in model.named_parameters() if n.startswith(("transformer", "final_ln", "token_embedding", "positional_embedding", "padding_embedding"))]
opt = torch.optim.AdamW(text_params + list(heads.parameters()), lr=float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3, weight_decay=0.01)
train = CaptionedShapes(32, 200_000, seed=1, min_shapes=1, max_shapes=2, split="train")
held = CaptionedShapes(32, 2000, seed=2, min_shapes=2, max_shapes=2, split="heldout")

def table(ds, n):
    scenes = [ds.scene(i) for i in range(n)]
    tok, mask = model.tokenize([caption_for(s) for s in scenes])
    return tok, mask, torch.tensor([targets(s) for s in scenes])

t_train, t_held = table(train, 60_000), table(held, 1000)
print("tables built", flush=True)

def batch(tab, idx):
    idx = torch.as_tensor(list(idx))
    return tuple(t[idx] for t in tab)

def logits(tok, mask):
    pooled = model.encode_text(tok, mask)[0]
    return [h(pooled) for h in heads]

def accuracy(ds, n=1000):
    with torch.no_grad():
        tok, mask, y = batch(ds, range(n))
        out = logits(tok, mask)
        per = torch.stack([o.argmax(-1) == y[:, k] for k, o in enumerate(out)], 1)
        return per.float().mean(0).tolist(), per.all(1).float().mean().item()

t0 = time.time()
for step in range(1, steps + 1):
    idx = torch.randint(0, 60_000, (256,)).tolist()
    tok, mask, y = batch(t_train, idx)
    out = logits(tok, mask)
    loss = sum(F.cross_entropy(o, y[:, k]) for k, o in enumerate(out))
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0:
        per, whole = accuracy(t_held)
        print(f"step {step} loss {loss.item():.3f} heldout-2obj per-target {[round(p, 3) for p in per]} all {whole:.3f} ({time.time() - t0:.0f}s)", flush=True)
save_model(model, dest)
print("saved", dest)
