"""Evaluation: few-shot finetuning and linear probing on labelled image folders."""
