"""Batch and observation keys shared by the policy, the training loop and the inference wrapper.

Dimension letters used in shape comments: B batch, T time/sequence, H heads, D head dim,
A action dim, h action horizon (chunk), N subgoal codes, C channels.
"""

from __future__ import annotations

OBS_AGENTVIEW = "observation.images.agentview"
OBS_WRIST = "observation.images.wrist"
OBS_STATE = "observation.state"
ACTION = "action"
ACTION_IS_PAD = "action_is_pad"
TASK = "task"
# Training batches carry the subgoal frame (the agentview frame k steps ahead) under this key.
SUBGOAL_IMAGE = "subgoal_image"
# Optional auxiliary target: world xyz (m) of the object the instruction names, at the episode's start.
TARGET_POS = "target_pos"

CAMERA_KEYS: tuple[str, ...] = (OBS_AGENTVIEW, OBS_WRIST)
STATE_DIM = 8
ACTION_DIM = 7
CONTROL_HZ = 20
GRIPPER_CONVENTION = "-1 open, +1 close"
