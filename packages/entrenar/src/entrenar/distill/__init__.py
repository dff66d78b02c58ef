"""Knowledge distillation: teachers, their vocabulary check, the loss step and layer-wise transfer."""
