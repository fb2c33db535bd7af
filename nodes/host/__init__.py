"""Host plumbing: how the pack plugs into ComfyUI, below the node classes of ``nodes/``.

* ``model_type``: Paint by Example as a host model type (its conditioning channels), the host MODEL and VAE built
  from a loaded checkpoint, one copy of the weights;
* ``encoder``: the ``PBE_ENCODER`` socket type and its value, the exemplar encoder under the host's model
  management, with its cache of recent encodings;
* ``models_folder``: ``models/paint_by_example`` registered, listed and resolved;
* ``conditioning``: an edit window as the host's CONDITIONING and LATENT;
* ``sampling``: the reference sampler and the host's samplers starting from noise, one window sampled and decoded;
* ``single_token_attention``, ``shared_cfg_prefix``, ``attention_choice``, ``forward_patches``: patches of the UNet
  on a clone of the MODEL, the host's way;
* ``model_sampling_check``: the noise schedule and prediction type the model can be sampled with (what a host
  ModelSampling node may set);
* ``tooltips``: texts several nodes show.

Everything PbE-specific that does not need the host lives in ``pbe_core``.
"""
