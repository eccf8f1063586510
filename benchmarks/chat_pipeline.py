"""Chat data preparation, as a user gets it: a JSONL of synthetic conversations (1 to 3 turns of
words drawn Zipf-like from a fixed vocabulary) read, rendered in a ChatML chat template,
tokenized with a Hugging Face byte-level BPE (8,192 ids) with the answers marked, and packed into
windows of 1,024 tokens (bigjax/data/chat.py), from the file to cached windows, each size in a
fresh process: conversations per minute and peak memory (RSS), which must not grow with the
number of conversations.

python benchmarks/chat_pipeline.py [--sizes=10000,100000] [--smoke]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")
SEQ_LEN = 1023


def write_conversations(path: str, count: int, seed: int = 0) -> None:
    import numpy as np
    rng = np.random.default_rng(seed)
    words = [f'w{i}' if i % 7 else f'Word{i}.' for i in range(20_000)]
    probabilities = 1.0 / np.arange(1, len(words) + 1)
    probabilities /= probabilities.sum()

    def text(low: int, high: int) -> str:
        return ' '.join(words[i] for i in rng.choice(len(words), rng.integers(low, high),
                                                     p=probabilities))

    with open(path, 'w') as f:
        for _ in range(count):
            messages = []
            for _ in range(rng.integers(1, 4)):
                messages += [{'role': 'user', 'content': text(10, 80)},
                             {'role': 'assistant', 'content': text(10, 120)}]
            f.write(json.dumps({'messages': messages}) + '\n')


def tokenizer_folder(folder: str, sample_path: str) -> None:
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    with open(sample_path) as f:
        lines = [line for _, line in zip(range(2000), f)]
    tokenizer.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=8192, special_tokens=['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, chat_template=CHATML, eos_token='<|im_end|>',
        pad_token='<|endoftext|>').save_pretrained(folder)


def prepare(path: str, folder: str, data_dir: str) -> None:
    """The measured part, in its own process: file -> cached windows."""
    sys.path.insert(0, REPO)
    from bigjax import config as config_lib
    from bigjax.data import chat
    config = config_lib.default_config()
    config.data.update(name='chat', paths=path, data_dir=data_dir)
    config.data.text.tokenizer = f'hf:{folder}'
    config.data.text.seq_len = SEQ_LEN
    start = time.perf_counter()
    dataset = chat.open_chat(config.data)
    seconds = time.perf_counter() - start
    stats = dataset.chat.stats['train']
    print(json.dumps({'seconds': seconds, 'conversations': stats['examples'] + dataset.chat.stats[
        'eval']['examples'], 'windows': stats['windows'], 'fill': stats['fill'],
        'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='10000,100000')
    parser.add_argument('--smoke', action='store_true', help='sizes of 200 and 400')
    parser.add_argument('--prepare', nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(*args.prepare)
        return
    sizes = [200, 400] if args.smoke else [int(s) for s in args.sizes.split(',')]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for size in sizes:
            path = os.path.join(root, f'chat_{size}.jsonl')
            write_conversations(path, size)
            folder = os.path.join(root, 'tokenizer')
            if not os.path.isdir(folder):
                tokenizer_folder(folder, path)
            out = subprocess.run([sys.executable, __file__, '--prepare', path, folder,
                                  os.path.join(root, f'data_{size}')],
                                 capture_output=True, text=True, check=True)
            rows.append((size, os.path.getsize(path), json.loads(out.stdout.splitlines()[-1])))
    print(f'\n{os.cpu_count()} CPUs; windows of {SEQ_LEN + 1} tokens, ChatML, BPE 8192')
    print(f'{"conversations":>13s} {"MB of JSONL":>11s} {"seconds":>8s} {"per minute":>11s} '
          f'{"peak RSS MB":>11s} {"windows":>8s} {"filled":>7s}')
    for size, nbytes, r in rows:
        print(f'{size:13,d} {nbytes / 2 ** 20:11.1f} {r["seconds"]:8.1f} '
              f'{60 * r["conversations"] / r["seconds"]:11,.0f} {r["peak_mb"]:11.0f} '
              f'{r["windows"]:8,d} {100 * r["fill"]:6.1f}%')


if __name__ == '__main__':
    main()
