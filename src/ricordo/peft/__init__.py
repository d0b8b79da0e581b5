"""Parameter-efficient parts for continual learning on a frozen pretrained transformer.

One concept per module, shared by the methods that train small parts of a frozen
``ricordo.models.transformer.TransformerEncoder`` (s-prompts, s-lora, color; l2p, l2l):

- ``lora``: named LoRA adapters injected into the encoder's Hugging Face model through ``peft``
  (one per task or per pool entry); activate one, train only it, save and restore its tensors.
- ``prompts``: learnable prompt tokens, one (length, dim) set per task or pool entry, inserted
  after the CLS token by ``TransformerEncoder.forward(x, prompts=...)``.
- ``routing``: k-means prototypes of frozen features per task, nearest-prototype task
  identification per sample, and per-sample routing inside a mixed batch (group rows by
  expert, run each group, scatter the results back in row order).
- ``heads``: one linear classifier per task over that task's classes, whose logits are placed
  at the classes' ids in the model's output width.
- ``pool``: learned keys of a pool of entries (L2P's prompts, L2L's adapters), top-N retrieval
  by cosine similarity to a frozen query, L2P's batch-wise vote and key-matching loss, and the
  selection counts per update that identify which update a row's entries belong to.

Everything here is plain tensors and small modules: a method owns them (never the model), saves
them through ``state_tensors``/``state_json`` (safetensors + JSON) and restores them bit for bit.
LoRA weights live inside the encoder while training, so a method keeps a CPU copy of each
finished adapter and re-injects it after a state is loaded (``Method.attach``).
Needs the ``nlp`` extra (transformers, peft); ``peft`` is imported only by ``lora``.
"""
