"""odock.dialects"""
