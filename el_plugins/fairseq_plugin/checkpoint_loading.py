"""Let fairseq load its own checkpoints on torch >= 2.6 (weights_only default): runs when el-plugins
activates in fairseq. See el_plugins.checkpoints."""
from el_plugins.checkpoints import allow_training_checkpoint_globals

allow_training_checkpoint_globals()
