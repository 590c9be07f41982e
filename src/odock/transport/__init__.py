"""odock.transport"""
