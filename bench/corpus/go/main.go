// A batch job in Go using only the standard library: a pool of worker
// goroutines fed through channels turns generated text records into word
// counts and SHA-256 digests; the results are merged in maps, sorted and
// formatted.
//
// Usage: go.wasm [JOBS] [WORKERS]
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
)

var vocabulary = strings.Fields(`lorem ipsum dolor sit amet consectetur adipiscing elit sed do
	eiusmod tempor incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud
	exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure in
	reprehenderit voluptate velit esse cillum fugiat nulla pariatur excepteur sint occaecat
	cupidatat non proident sunt culpa qui officia deserunt mollit anim id est laborum`)

type job struct {
	id   int
	text string
}

type result struct {
	id     int
	digest [sha256.Size]byte
	words  map[string]int
	sum    int64
}

func makeText(rng *rand.Rand, lines int) string {
	var b strings.Builder
	for i := 0; i < lines; i++ {
		n := 5 + rng.Intn(12)
		for w := 0; w < n; w++ {
			if w > 0 {
				b.WriteByte(' ')
			}
			if rng.Intn(8) == 0 {
				b.WriteString(strconv.Itoa(rng.Intn(100000)))
			} else {
				b.WriteString(vocabulary[rng.Intn(len(vocabulary))])
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func process(j job) result {
	r := result{id: j.id, words: make(map[string]int)}
	// Hash the record a few times over, as a content-addressed store would
	// when it re-verifies a chunk.
	data := []byte(j.text)
	r.digest = sha256.Sum256(data)
	for i := 0; i < 8; i++ {
		r.digest = sha256.Sum256(append(r.digest[:], data...))
	}
	for _, line := range strings.Split(j.text, "\n") {
		for _, field := range strings.Fields(line) {
			if n, err := strconv.ParseInt(field, 10, 64); err == nil {
				r.sum += n
				continue
			}
			r.words[strings.ToUpper(field[:1])+field[1:]]++
		}
	}
	return r
}

func worker(jobs <-chan job, results chan<- result, wg *sync.WaitGroup) {
	defer wg.Done()
	for j := range jobs {
		results <- process(j)
	}
}

func argInt(i, def int) int {
	if len(os.Args) > i {
		if v, err := strconv.Atoi(os.Args[i]); err == nil {
			return v
		}
	}
	return def
}

func main() {
	nJobs := argInt(1, 400)
	nWorkers := argInt(2, 4)

	jobs := make(chan job, nWorkers)
	results := make(chan result, nWorkers)
	var wg sync.WaitGroup
	for w := 0; w < nWorkers; w++ {
		wg.Add(1)
		go worker(jobs, results, &wg)
	}
	go func() {
		rng := rand.New(rand.NewSource(2024))
		for i := 0; i < nJobs; i++ {
			jobs <- job{id: i, text: makeText(rng, 200)}
		}
		close(jobs)
	}()
	go func() {
		wg.Wait()
		close(results)
	}()

	var all []result
	totals := make(map[string]int)
	var numberSum int64
	for r := range results {
		all = append(all, r)
		for w, c := range r.words {
			totals[w] += c
		}
		numberSum += r.sum
	}

	sort.Slice(all, func(a, b int) bool { return all[a].id < all[b].id })
	combined := sha256.New()
	for _, r := range all {
		combined.Write(r.digest[:])
	}

	type wordCount struct {
		word  string
		count int
	}
	var counts []wordCount
	for w, c := range totals {
		counts = append(counts, wordCount{w, c})
	}
	sort.Slice(counts, func(a, b int) bool {
		if counts[a].count != counts[b].count {
			return counts[a].count > counts[b].count
		}
		return counts[a].word < counts[b].word
	})

	fmt.Printf("%d jobs on %d workers, %d distinct words, numbers sum to %d\n",
		len(all), nWorkers, len(counts), numberSum)
	var top []string
	for _, wc := range counts[:5] {
		top = append(top, wc.word+"="+strconv.Itoa(wc.count))
	}
	fmt.Println("top words:", strings.Join(top, ", "))
	fmt.Println("first digest:", hex.EncodeToString(all[0].digest[:]))
	fmt.Println("combined digest:", hex.EncodeToString(combined.Sum(nil)))
}
