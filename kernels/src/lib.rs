//! NF4 and LoRA kernels: CPU references, and CUDA versions compiled at run time with NVRTC.
