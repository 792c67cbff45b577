"""megastack.kernels"""
