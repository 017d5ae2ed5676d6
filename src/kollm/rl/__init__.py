"""RL with verifiable rewards: reward functions (rewards.py) and rollouts (rollout.py) for `kollm grpo`."""
