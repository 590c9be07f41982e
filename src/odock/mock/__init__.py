"""odock.mock"""
