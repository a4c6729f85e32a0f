"""Chat templates: a model's own Jinja chat_template rendered as transformers renders it, the built-in
ChatML and Llama 3 templates equal to those models' real templates, and ``chat`` / ``generate --chat`` using
them on an imported run."""

import json

import pytest

from tinyllm.chat_template import ChatTemplate, load_chat_template

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
          "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
STRICT = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
          "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{{ m['content'] }}{% endfor %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi there! "},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]


@pytest.mark.parametrize("source", [SMOLLM2, CHATML, LLAMA3])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_jinja_rendering_matches_transformers(source, generation_prompt):
    pytest.importorskip("jinja2")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>")
    hf.chat_template = source
    for messages in (MESSAGES, MESSAGES[1:]):
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        ours = ChatTemplate(source, bos_token="<|begin_of_text|>").render(messages, generation_prompt)
        assert ours == expected


@pytest.mark.parametrize("kind, source", [("chatml", CHATML), ("llama3", LLAMA3)])
def test_builtin_templates_equal_the_real_ones(kind, source):
    pytest.importorskip("jinja2")
    bos = "<|begin_of_text|>"
    for prompt in (True, False):
        builtin, jinja = ChatTemplate(None, kind, bos), ChatTemplate(source, bos_token=bos)
        assert builtin.render(MESSAGES, prompt) == jinja.render(MESSAGES, prompt)


def test_raise_exception_and_bad_messages_are_errors():
    pytest.importorskip("jinja2")
    from jinja2.exceptions import TemplateError
    with pytest.raises(TemplateError, match="Only user and assistant"):
        ChatTemplate(STRICT).render(MESSAGES)
    with pytest.raises(ValueError, match="message 0"):
        ChatTemplate(None, "chatml").render([{"role": "user"}])


def test_without_jinja_the_builtin_template_is_picked(tmp_path, monkeypatch):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": SMOLLM2, "eos_token": "<|im_end|>"}))

    class Tok:
        special_tokens = {"<|im_start|>": 1, "<|im_end|>": 2}

    monkeypatch.setattr("tinyllm.chat_template.jinja_available", lambda: False)
    template = load_chat_template(tmp_path, Tok())
    assert template.kind == "chatml" and template.stop_tokens[0] == "<|im_end|>"
    monkeypatch.undo()
    try:                                                     # no built-in fits: jinja2 is asked for
        import jinja2  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"tinyllm\[hf\]"):
            load_chat_template(tmp_path, None)
    else:
        assert load_chat_template(tmp_path, None).kind == "jinja"


def test_instruction_data_in_a_chat_template():
    """finetune instruct --template chat: prompt = the rendered user turn + assistant header, the response ends
    with the end-of-turn token, and a special-token string inside the record stays ordinary text."""
    from tinyllm.data.instructions import encode_instructions, end_token
    from tinyllm.tokenizer import BPETokenizer

    tok = BPETokenizer.train("hello world, say hi. " * 20, 280, special_tokens=["<|im_start|>", "<|im_end|>"])
    template = ChatTemplate(None, "chatml")
    record = {"instruction": "Say hi", "input": "to <|im_end|>", "output": "hi"}
    encoded = encode_instructions([record], tok, 64, template)
    ids, prompt_length = encoded.sequences[0], encoded.prompt_lengths[0]
    im_end = tok.special_tokens["<|im_end|>"]
    assert end_token(tok, template).id == im_end and ids[-1] == im_end
    prompt = "<|im_start|>user\nSay hi\n\nto <|im_end|><|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ids[:prompt_length]) == prompt and tok.decode(ids[prompt_length:-1]) == "hi"
    assert ids[:prompt_length].count(im_end) == 1                 # the template's own, not the record's
