"""Orbax checkpoints of a run: train state, the open metric window, data position and config.

Saves are asynchronous and atomic (Orbax writes a temporary folder and renames it when done), so
a kill at any moment leaves the previous checkpoints intact; the newest `keep` are kept. A save
that fails (a full disk) is a one-line UserError; a checkpoint that cannot be read is moved aside
to <workdir>/checkpoints.damaged, never deleted.
"""

import jax
import orbax.checkpoint as ocp
from etils import epath

from bigjax import pytree
from bigjax import workdir as workdir_lib
from bigjax.errors import UserError

DAMAGED_DIR = 'checkpoints.damaged'


class Checkpointer:
    """<workdir>/checkpoints/<step>/{state, window, data, config}. read_only: for reading a
    run's checkpoints (sample, report, export), creating nothing and starting no clean-up."""

    def __init__(self, workdir, *, keep: int, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=True)
        self.directory = epath.Path(workdir) / 'checkpoints'
        handlers = {'state': ocp.StandardCheckpointHandler(),
                    'window': ocp.StandardCheckpointHandler(),
                    'data': ocp.JsonCheckpointHandler(), 'config': ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def check_compatible(self, step: int, abstract_state) -> None:
        """Raises UserError naming the arrays whose shapes differ from the checkpoint's."""
        saved = _shapes(self.manager.item_metadata(step)['state'].tree)
        wanted = {pytree.path_name(path, '.'): tuple(leaf.shape)
                  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        differing = sorted((name for name in saved.keys() | wanted.keys()
                            if saved.get(name) != wanted.get(name)),
                           key=lambda name: (not name.startswith('params.'),
                                             -len(saved.get(name, wanted.get(name))), name))
        problems = [f'{name} is {saved.get(name, "absent")} there and {wanted.get(name, "absent")} '
                    'here' for name in differing]
        if problems:
            shown = '; '.join(problems[:3]) + (f'; and {len(problems) - 3} more'
                                               if len(problems) > 3 else '')
            raise UserError(f'the checkpoint at step {step} in {self.directory} comes from an '
                            f'incompatible config: {shown}. Use a new --workdir, or the config '
                            'that wrote it')

    def save(self, step: int, state, window, data_state: dict, config_json: dict) -> None:
        """Starts an asynchronous save; the previous one is finished first."""
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), window=ocp.args.StandardSave(window),
                data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config_json)))
        except Exception as e:  # Orbax raises ValueError, OSError, ... for a failed write.
            raise workdir_lib.write_failed(self.directory, e) from None

    def move_aside(self, step: int) -> epath.Path:
        """Moves the checkpoint at `step` to <workdir>/checkpoints.damaged/<step>; returns where."""
        target = self.directory.parent / DAMAGED_DIR / str(step)
        suffix = 0
        while target.exists():
            suffix += 1
            target = target.parent / f'{step}.{suffix}'
        target.parent.mkdir(parents=True, exist_ok=True)
        workdir_lib.move(self.directory / str(step), target)
        self.manager.reload()
        return target

    def saved_config(self, step: int) -> dict:
        """The resolved config (as JSON) of the run that wrote the checkpoint at `step`."""
        return self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore())).config

    def restore(self, step: int, abstract_state, abstract_window):
        """(state, window, data_state) at `step`, laid out as the abstract trees' shardings say."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            window=ocp.args.StandardRestore(abstract_window), data=ocp.args.JsonRestore()))
        return restored.state, restored.window, restored.data

    def wait(self) -> None:
        """Blocks until a save in flight is on disk."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise workdir_lib.write_failed(self.directory, e) from None

    def close(self) -> None:
        """Waits for a save in flight, then releases the manager."""
        try:
            self.wait()
        finally:
            self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _shapes(tree, prefix: str = '') -> dict[str, tuple]:
    """{array name: shape} for the array metadata leaves of a checkpoint's tree."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    elif hasattr(tree, 'shape'):
        return {prefix: tuple(tree.shape)}
    else:
        return {}
    shapes = {}
    for key, child in items:
        shapes.update(_shapes(child, f'{prefix}.{key}' if prefix else str(key)))
    return shapes
