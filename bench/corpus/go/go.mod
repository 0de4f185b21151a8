module wmig.example/corpus/gobench

go 1.22
