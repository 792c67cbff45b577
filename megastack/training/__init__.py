"""megastack.training"""
