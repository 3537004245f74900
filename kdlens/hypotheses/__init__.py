"""Knowledge distillation or only a regularization effect: the structure test on the
teacher's non-target mass, control teachers, and the comparison of students."""
