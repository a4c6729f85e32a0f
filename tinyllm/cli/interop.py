"""``tinyllm import-hf``, ``tinyllm export-hf`` (Hugging Face GPT-2, Llama-family and BERT
directories) and ``tinyllm export-onnx``."""

from __future__ import annotations

import time
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("import-hf",
                       help="turn a Hugging Face model directory (GPT-2, Llama, Qwen2, Mistral, "
                            "Mixtral, SmolLM, BERT) into a tinyllm run directory",
                       description="Read DIR/config.json and DIR/model.safetensors (or its shards "
                                   "and index; float32, float16 or bfloat16). config.json's "
                                   "architectures picks the layout: LlamaForCausalLM, "
                                   "Qwen2ForCausalLM, MistralForCausalLM and MixtralForCausalLM "
                                   "read tokenizer.json (byte-level BPE) and keep "
                                   "tokenizer_config.json (its chat template); a BERT directory "
                                   "(BertForMaskedLM or BertModel, with vocab.txt) becomes an "
                                   "encoder run; GPT2LMHeadModel reads tinyllm_tokenizer.json "
                                   "(written by export-hf), else vocab.json + merges.txt (or "
                                   "OpenAI's encoder.json + vocab.bpe), read with GPT-2's split "
                                   "pattern. Writes a run directory that generate, eval, chat and "
                                   "finetuning load like any other.")
    p.add_argument("dir", help="Hugging Face model directory")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="dtype of the weights written")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.set_defaults(func=run_import_hf)

    p = sub.add_parser("export-hf",
                       help="write a run as a Hugging Face directory (from_pretrained loads it)",
                       description="Write config.json and model.safetensors: GPT2LMHeadModel's "
                                   "layout (plus vocab.json + merges.txt when the run's tokenizer "
                                   "is BPE) for a GPT-2-style run, LlamaForCausalLM / "
                                   "Qwen2ForCausalLM / MixtralForCausalLM for a Llama-style one "
                                   "(plus tokenizer.json: the imported one, or the run's BPE "
                                   "tokenizer converted; and tokenizer_config.json when it was "
                                   "imported with one), BertForMaskedLM with vocab.txt for an "
                                   "encoder run (float32 only).")
    p.add_argument("run", help="run directory (or its model.safetensors)")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the tensors in model.safetensors")
    p.set_defaults(func=run_export_hf)

    p = sub.add_parser("export-onnx", help="write a run as an ONNX model that onnxruntime (or any "
                                           "ONNX runtime) runs",
                       description="Write the model's forward as an ONNX graph (opset 17) for "
                                   "GPT-2- and Llama-style runs: inputs input_ids, attention_mask, "
                                   "position_ids and, with the KV cache (the default), "
                                   "past_key_values.{i}.key/value; outputs logits and "
                                   "present.{i}.key/value, named as in Hugging Face's ONNX "
                                   "exports. The file is checked with onnx.checker and, when "
                                   "onnxruntime is installed, run on random tokens (a prefill and "
                                   "a decode step) and compared with tinyllm's logits. Needs the "
                                   "onnx package (pip install 'tinyllm[onnx]').")
    p.add_argument("run", help="run directory (or its model.safetensors)")
    p.add_argument("--out", required=True,
                   help="ONNX file to write, e.g. model.onnx (weights over 1.8 GB go to "
                        "OUT.data beside it)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="weights, activations, cache and logits (float16: norms and softmax still "
                        "in float32)")
    p.add_argument("--no-cache", action="store_true",
                   help="a graph without past_key_values inputs and present outputs (every call "
                        "sees the whole sequence)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not run the file in onnxruntime after writing it")
    p.set_defaults(func=run_export_onnx)


def _check_out(out: Path, overwrite: bool, source: Path | None = None) -> None:
    if source is not None and out.resolve() == source.resolve():
        raise ValueError(f"--out '{out}' is the source run itself; choose another directory")
    if (out / "model.safetensors").exists() and not overwrite:
        raise ValueError(f"'{out}' already holds a model; pass --overwrite to replace it or choose "
                         "another --out")


# ---------------------------------------------------------------------------------- import / export


def run_import_hf(args) -> int:
    from ..files import read_json
    from ..interop.hf_llama import architecture_of

    config_file = Path(args.dir) / "config.json"
    if config_file.exists() and architecture_of(read_json(config_file, what="Hugging Face config")):
        return _import_llama(args)
    return _import_gpt2(args)


def _import_llama(args) -> int:
    import shutil

    from ..checkpoint import save_model
    from ..interop.hf_llama import load_hf_llama
    from ..tokenizer.hf_json import load_hf_tokenizer

    source, out = Path(args.dir), Path(args.out)
    _check_out(out, args.overwrite, source)
    t0 = time.perf_counter()
    model, arch = load_hf_llama(source, dtype=args.dtype)
    tokenizer = None
    if (source / "tokenizer.json").exists():
        try:
            tokenizer = load_hf_tokenizer(source / "tokenizer.json")
        except ValueError as e:
            print(f"note: tokenizer.json not imported: {e}")
    save_model(out, model, tokenizer, step=0,
               extra_config={"imported_from": {"format": "huggingface", "architecture": arch,
                                               "path": str(source)}})
    if (source / "tokenizer_config.json").exists():
        # its chat template
        shutil.copyfile(source / "tokenizer_config.json", out / "tokenizer_config.json")
    c = model.config
    shape = (f"{c.n_layer} layers, {c.n_head} heads, {c.kv_heads} kv heads, {c.n_embd} dims, "
             f"{c.hidden_size} MLP, context {c.block_size}, vocabulary "
             f"{c.vocab_size}{f', {c.n_expert} experts' if c.mlp == 'moe' else ''}")
    return _report_import(f"{arch}: ", model, shape, tokenizer, "", out, t0)


def _report_import(what, model, shape, tokenizer, missing_hint, out, t0) -> int:
    print(f"imported {what}{model.num_parameters():,} parameters ({shape}) in "
          f"{time.perf_counter() - t0:.1f}s")
    print(f"tokenizer: {tokenizer!r}" if tokenizer else
          f"tokenizer: none{missing_hint}; the run cannot encode text until you add one")
    print(f"run saved in {out}/")
    return 0


def _import_gpt2(args) -> int:
    from ..checkpoint import save_model
    from ..files import read_json
    config_file = Path(args.dir) / "config.json"
    if config_file.exists() and read_json(config_file,
                                          what="Hugging Face config").get("model_type") == "bert":
        return _import_bert(args)
    from ..interop import find_tokenizer_files, load_gpt2_tokenizer, load_hf_gpt2
    from ..interop.hf_gpt2 import TINYLLM_TOKENIZER
    from ..tokenizer import load_tokenizer

    out = Path(args.out)
    _check_out(out, args.overwrite, Path(args.dir))
    t0 = time.perf_counter()
    model = load_hf_gpt2(args.dir, dtype=args.dtype)
    files = find_tokenizer_files(args.dir)
    # written by export-hf: the exact tokenizer
    own = Path(args.dir) / TINYLLM_TOKENIZER
    tokenizer = (load_tokenizer(own) if own.exists()
                 else load_gpt2_tokenizer(*files) if files else None)
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer in '{args.dir}' has {tokenizer.vocab_size} tokens but the "
                         f"model only {model.config.vocab_size} embedding rows")
    save_model(out, model, tokenizer, step=0,
               extra_config={"imported_from": {"format": "huggingface-gpt2",
                                               "path": str(args.dir)}})
    c = model.config
    shape = (f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} dims, context {c.block_size}, "
             f"vocabulary {c.vocab_size}")
    return _report_import("", model, shape, tokenizer,
                          " (no vocab.json + merges.txt in the directory)", out, t0)


def _import_bert(args) -> int:
    from ..checkpoint import save_model
    from ..interop.hf_bert import load_hf_bert
    out = Path(args.out)
    _check_out(out, args.overwrite, Path(args.dir))
    model, tokenizer = load_hf_bert(args.dir, dtype=args.dtype)
    save_model(out, model, tokenizer, step=0,
               extra_config={"imported_from": {"format": "huggingface-bert",
                                               "path": str(args.dir)}})
    c = model.config
    print(f"imported a BERT encoder: {model.num_parameters():,} parameters ({c.n_layer} layers, "
          f"{c.n_head} heads, {c.n_embd} dims, context {c.block_size}, vocabulary {c.vocab_size})")
    if model.fresh_head:
        print("note: the directory holds a BertModel (no masked-LM head): the head starts "
              "untrained")
    print(f"tokenizer: {tokenizer!r}" if tokenizer else "tokenizer: none (no vocab.txt in the "
                                                        "directory)")
    print(f"run saved in {out}/")
    return 0


def run_export_hf(args) -> int:
    from ..checkpoint import load_config, load_pretrained
    from ..interop.hf_llama import save_hf_llama

    from ..low_rank import low_rank_ranks
    from ..quantize import dequantize_model, int8_layers

    model, tokenizer = load_pretrained(args.run, allow_encoder=True)
    if low_rank_ranks(model):
        raise ValueError(f"'{args.run}' has low-rank (factored) layers, which Hugging Face's "
                         "layouts cannot hold; export the run they were factored from")
    if int8_layers(model):
        print("note: the run's int8 weights are written as float (q · scale): Hugging Face has no "
              "such int8 layout")
        dequantize_model(model)
    if getattr(model, "architecture", None) == "encoder":
        return _export_bert(args, model, tokenizer)
    if model.config.pos != "rope":
        return _export_gpt2(args, model, tokenizer)
    run = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    imported = load_config(run).get("imported_from") or {}
    out = save_hf_llama(model, args.out, tokenizer, args.dtype, imported.get("architecture"))
    if (run / "tokenizer_config.json").exists():
        (out / "tokenizer_config.json").write_bytes((run / "tokenizer_config.json").read_bytes())
    written = sorted(path.name for path in out.iterdir())
    print(f"wrote {', '.join(written)} to {out}/ ({model.num_parameters():,} parameters, "
          f"{args.dtype})")
    return 0


def _export_bert(args, model, tokenizer) -> int:
    from ..interop.hf_bert import save_hf_bert
    if args.dtype != "float32":
        raise ValueError(f"an encoder run is exported as float32 only, not {args.dtype}")
    out = save_hf_bert(model, args.out, tokenizer)
    print(f"wrote config.json, model.safetensors{', vocab.txt' if tokenizer else ''} (BERT) to "
          f"{out}/ ({model.num_parameters():,} parameters, float32)")
    return 0


def _export_gpt2(args, model, tokenizer) -> int:
    from ..interop import save_hf_gpt2
    from ..interop.gpt2_tokenizer import uses_gpt2_pattern
    from ..interop.hf_gpt2 import TINYLLM_TOKENIZER
    from ..tokenizer import BPETokenizer

    config = model.config
    if config.head_dim is not None and config.head_dim * config.n_head != config.n_embd:
        raise ValueError(f"GPT-2's config cannot describe {model.config.n_head} heads of width "
                         f"{model.config.head_dim} in {model.config.n_embd} dimensions (heads were "
                         "pruned): export the run before pruning")
    bpe = tokenizer if isinstance(tokenizer, BPETokenizer) else None
    out = save_hf_gpt2(model, args.out, tokenizer=tokenizer, dtype=args.dtype)
    written = (["config.json", "model.safetensors"] + (["vocab.json", "merges.txt"] if bpe else [])
               + ([TINYLLM_TOKENIZER] if tokenizer is not None else []))
    print(f"wrote {', '.join(written)} to {out}/ ({model.num_parameters():,} parameters, "
          f"{args.dtype})")
    if not model.config.bias:
        print("note: the model has no biases; GPT-2 always has them, so zeros were written (same "
              "function)")
    if tokenizer is not None and bpe is None:
        print(f"note: the run's tokenizer is a {type(tokenizer).__name__}; only BPE tokenizers "
              f"have a GPT-2 form (vocab.json + merges.txt), so only {TINYLLM_TOKENIZER} was "
              "written")
    if bpe is not None and not uses_gpt2_pattern(bpe):
        print("note: the tokenizer splits text with another pattern than GPT-2's; Hugging Face's "
              "GPT2Tokenizer always uses GPT-2's, so its ids can differ from tinyllm's on some "
              f"texts. tinyllm import-hf reads {TINYLLM_TOKENIZER} and gets the exact tokenizer "
              "back")
    return 0


def run_export_onnx(args) -> int:
    from ..checkpoint import load_config, load_pretrained
    from ..interop.onnx_export import export_onnx
    from ..interop.onnx_run import compare_with_onnxruntime, onnxruntime_session
    from ..quantize import human_bytes

    quantization = load_config(args.run).get("quantization")
    if quantization is not None:
        raise ValueError(f"'{args.run}' is a quantized run (config.json: quantization "
                         f"{quantization!r}); export-onnx writes float32 or float16 weights only, "
                         "so export the run it was compressed from (--dtype float16 halves the "
                         "file)")
    model, _ = load_pretrained(args.run)
    info = export_onnx(model, args.out, args.dtype, kv_cache=not args.no_cache)
    cache = "without a KV cache" if args.no_cache else "with a KV cache"
    print(f"wrote {info['path']} ({human_bytes(info['bytes'])} of {args.dtype} weights, "
          f"{info['nodes']} nodes, opset 17, {cache}); onnx.checker: ok")
    if info["data_path"]:
        print(f"the weights are in {info['data_path']} (keep it beside {info['path'].name})")
    if args.no_verify:
        return 0
    try:
        session = onnxruntime_session(info["path"])
    except RuntimeError:
        print("note: onnxruntime is not installed, so the file was not run (pip install "
              "onnxruntime to check it)")
        return 0
    tokens = min(8, model.config.block_size)
    difference, largest = compare_with_onnxruntime(model, session, tokens)
    steps = "in one call" if args.no_cache else "as a prefill and one decode step"
    tolerance = (1e-4 if args.dtype == "float32" else 5e-2) * max(1.0, largest)
    print(f"onnxruntime: logits of {tokens} random tokens, {steps}, differ from tinyllm's by at "
          f"most {difference:.2g} (largest |logit| {largest:.3g})")
    if not difference <= tolerance:
        raise RuntimeError(f"onnxruntime's logits differ from tinyllm's by {difference:.3g}, more "
                           f"than the {tolerance:.3g} expected for {args.dtype}: the exported "
                           "graph is wrong (please report it)")
    return 0
